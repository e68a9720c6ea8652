/**
 * Real parts for a test file: the server (in this process) on a free port,
 * Pushpin instances on free ports in front of it, a worker, and small real
 * HTTP clients (GraphQL, register/sign-in) on top.
 */
import { createServer } from "node:net";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import type { TestDb } from "./db.ts";
import { startServer } from "../../server/index.ts";
import { startPushpin, type Pushpin } from "../../server/devstack/pushpin.ts";

/**
 * Free ports for test servers, Pushpin and clusters come from 20000–31999, below the ephemeral
 * range (32768+): there the OS also hands ports to outgoing connections, and one took a port we
 * had picked before the server bound it (EADDRINUSE in a CI run). Each test process draws from
 * its own slice (by pid) and never hands out a port twice, which keeps concurrent files apart.
 */
const handedOut = new Set<number>();
const SLICE = 400;
const sliceStart = 20000 + (process.pid % Math.floor(12000 / SLICE)) * SLICE;

export async function freePort(): Promise<number> {
  return freePortRange(1);
}

/** Several consecutive free ports (Pushpin's ZeroMQ ports are base..base+3). */
export async function freePortRange(n: number): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = sliceStart + Math.floor(Math.random() * (SLICE - n));
    const ports = Array.from({ length: n }, (_, i) => base + i);
    if (ports.some((p) => handedOut.has(p))) continue;
    if ((await Promise.all(ports.map(portFree))).every(Boolean)) {
      for (const p of ports) handedOut.add(p);
      return base;
    }
  }
  throw new Error("no free port range");
}

function portFree(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = createServer();
    s.once("error", () => res(false));
    s.listen(port, "127.0.0.1", () => s.close(() => res(true)));
  });
}

export async function startTestPushpin(originPort: number, sigKey: string): Promise<Pushpin> {
  const [httpPort, publishPort, zmqBase] = [await freePort(), await freePort(), await freePortRange(4)];
  return startPushpin({
    id: "t" + randomBytes(4).toString("hex"),
    dataDir: join(process.env.TDC_TEST_DATA_DIR!, "pushpin"),
    httpPort, publishPort, zmqBase, origin: `127.0.0.1:${originPort}`, sigKey,
  });
}

export interface Stack {
  server: Awaited<ReturnType<typeof startServer>>;
  pushpin: Pushpin | null;
  /** Base URL clients use: Pushpin's when started, else the server's own. */
  url: string;
  sigKey: string;
  stop: () => Promise<void>;
}

export async function startStack(db: TestDb, opts: { pushpin?: boolean } = {}): Promise<Stack> {
  const sigKey = randomBytes(32).toString("hex");
  const serverPort = await freePort();
  let pushpin: Pushpin | null = null;
  const publishUrls: string[] = [];
  if (opts.pushpin) {
    pushpin = await startTestPushpin(serverPort, sigKey);
    publishUrls.push(pushpin.publishUrl);
  }
  const server = await startServer({ port: serverPort, authenticatorUrl: db.authenticatorUrl, publishUrls, gripSigKey: sigKey });
  return {
    server, pushpin, sigKey,
    url: pushpin ? pushpin.clientUrl : `http://127.0.0.1:${server.port}`,
    stop: async () => { await server.close(); await pushpin?.stop(); },
  };
}

export interface GqlResult { data?: any; errors?: Array<{ message: string; extensions?: { code?: string } }>; status: number }

export async function gql(url: string, query: string, variables: Record<string, unknown> = {}, token?: string): Promise<GqlResult> {
  const r = await fetch(url + "/graphql", {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  const body = await r.json();
  return { ...body, status: r.status };
}

/** The first error code of a GraphQL answer (or undefined). */
export const errCode = (r: GqlResult) => r.errors?.[0]?.extensions?.code;

export interface TestUser { id: string; email: string; handle: string; roleName: string; password: string; token: string }

let n = 0;
export async function signUp(url: string, handle?: string): Promise<TestUser> {
  n++;
  const h = handle ?? `user${n}_${randomBytes(3).toString("hex")}`;
  const email = `${h}@example.com`;
  const password = "correct horse battery";
  const r = await gql(url, `mutation($e:String!,$p:String!,$h:String){register(input:{email:$e,password:$p,handle:$h}){user{id email handle roleName}}}`,
    { e: email, p: password, h });
  if (r.errors) throw new Error(`register failed: ${JSON.stringify(r.errors)}`);
  const a = await gql(url, `mutation($e:String!,$p:String!){authenticate(input:{email:$e,password:$p}){jwtToken}}`, { e: email, p: password });
  if (a.errors) throw new Error(`authenticate failed: ${JSON.stringify(a.errors)}`);
  return { ...r.data.register.user, password, token: a.data.authenticate.jwtToken };
}
