/** Poll until `fn` returns a truthy value (or throw with the last value after `ms`). */
export async function eventually<T>(fn: () => Promise<T>, ms = 10_000, every = 100): Promise<Exclude<T, false | null | undefined | 0 | "">> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as Exclude<T, false | null | undefined | 0 | "">;
      last = v;
    } catch (e) { last = e; }
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, every));
  }
}
