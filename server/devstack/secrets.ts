/**
 * Per-installation secrets, generated once into <data>/secrets.json (mode 0600):
 * the embedded cluster's superuser password, the runtime roles' passwords and
 * Pushpin's GRIP signing key. Never logged.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";

export interface Secrets { superuser: string; owner: string; authenticator: string; gripSigKey: string }

export function loadSecrets(dataDir: string): Secrets {
  mkdirSync(dataDir, { recursive: true });
  const file = join(dataDir, "secrets.json");
  const gen = () => randomBytes(24).toString("base64url");
  const current: Partial<Secrets> = existsSync(file) ? JSON.parse(readFileSync(file, "utf8")) : {};
  const s: Secrets = {
    superuser: current.superuser ?? gen(),
    owner: current.owner ?? gen(),
    authenticator: current.authenticator ?? gen(),
    gripSigKey: current.gripSigKey ?? randomBytes(32).toString("hex"),
  };
  if (JSON.stringify(s) !== JSON.stringify(current)) writeFileSync(file, JSON.stringify(s, null, 2), { mode: 0o600 });
  return s;
}
