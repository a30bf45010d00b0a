/**
 * Test certificates made by the `openssl` CLI: a CA and certificates it
 * issues for 127.0.0.1, usable as server and as client certificates.
 *
 * @module
 */

import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";

/** Runs openssl in `cwd`; throws with its stderr on failure. */
export function openssl(args: string[], cwd: string): string {
  const r = spawnSync("openssl", args, { cwd, encoding: "utf8" });
  if (r.error) throw new Error("openssl is not installed: run scripts/deps.sh");
  if (r.status !== 0) {
    throw new Error(`openssl ${args.join(" ")} failed: ${r.stderr}`);
  }
  return r.stdout;
}

/** openssl arguments for a new ECDSA P-256 key, unencrypted. */
export const EC = [
  "-newkey",
  "ec",
  "-pkeyopt",
  "ec_paramgen_curve:P-256",
  "-nodes",
];

/**
 * `<dir>/<ca>.pem/.key` (made on first use), and `<dir>/<name>.pem/.key`
 * issued by it for 127.0.0.1, for server and client use.
 */
export function issued(dir: string, ca: string, name: string): void {
  if (!fs.existsSync(path.join(dir, `${ca}.pem`))) {
    openssl([
      "req",
      "-x509",
      ...EC,
      "-keyout",
      `${ca}.key`,
      "-out",
      `${ca}.pem`,
      "-days",
      "2",
      "-subj",
      `/CN=${ca}`,
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign",
    ], dir);
  }
  openssl([
    "req",
    "-new",
    ...EC,
    "-keyout",
    `${name}.key`,
    "-subj",
    "/CN=127.0.0.1",
    "-out",
    `${name}.csr`,
  ], dir);
  fs.writeFileSync(
    path.join(dir, `${name}.ext`),
    "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n" +
      "extendedKeyUsage=serverAuth,clientAuth\n",
  );
  openssl([
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    `${ca}.pem`,
    "-CAkey",
    `${ca}.key`,
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    `${name}.ext`,
    "-out",
    `${name}.pem`,
  ], dir);
}

/** A certificate's identity as moat names it: `cert:sha256:<hex>`. */
export function certIdentity(dir: string, pem: string): string {
  const colon = openssl(
    ["x509", "-in", pem, "-noout", "-fingerprint", "-sha256"],
    dir,
  ).trim().split("=")[1]!;
  return "cert:sha256:" + colon.replaceAll(":", "").toLowerCase();
}
