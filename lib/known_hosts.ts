/**
 * Trust on first use: the certificate fingerprints of servers seen before,
 * one `HOST:PORT sha256:<hex>` per line, in `known_hosts` under moat's
 * config directory.
 *
 * @module
 */

import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { MoatError } from "./errors.ts";

/** One remembered server. */
export interface KnownHost {
  /** `sha256:<64 hex>`. */
  fingerprint: string;
  /** 1-based line number in the file. */
  line: number;
}

/**
 * moat's config directory: `$MOAT_CONFIG_DIR`, else `$XDG_CONFIG_HOME/moat`,
 * else `~/.config/moat`.
 *
 * @param env The environment to read.
 * @returns An absolute path (it may not exist yet).
 */
export function configDir(
  env: Record<string, string | undefined> = process.env,
): string {
  if (env.MOAT_CONFIG_DIR) return path.resolve(env.MOAT_CONFIG_DIR);
  if (env.XDG_CONFIG_HOME) return path.resolve(env.XDG_CONFIG_HOME, "moat");
  return path.join(env.HOME || env.USERPROFILE || ".", ".config", "moat");
}

/**
 * The known_hosts file's path.
 *
 * @param env The environment to read.
 * @returns `<configDir>/known_hosts`.
 */
export function knownHostsFile(
  env: Record<string, string | undefined> = process.env,
): string {
  return path.join(configDir(env), "known_hosts");
}

/**
 * Looks a server up.
 *
 * @param file The known_hosts file.
 * @param host `HOST:PORT` (`[v6]:PORT`).
 * @returns Its entry, or undefined when the file or the host is absent.
 * @throws {MoatError} `ERR_KNOWN_HOSTS` when the file exists but cannot be read.
 */
export function findKnownHost(
  file: string,
  host: string,
): KnownHost | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new MoatError(
      "ERR_KNOWN_HOSTS",
      `Cannot read "${file}": ${(err as NodeJS.ErrnoException).code ?? err}`,
    );
  }
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const fields = lines[i]!.trim().split(/\s+/);
    if (
      fields[0] === host && fields[1] !== undefined &&
      !fields[0].startsWith("#")
    ) {
      return { fingerprint: fields[1].toLowerCase(), line: i + 1 };
    }
  }
  return undefined;
}

/**
 * Remembers a server: appends one line, creating the directory (0700) and
 * the file (0600) if needed.
 *
 * @param file The known_hosts file.
 * @param host `HOST:PORT`.
 * @param fp `sha256:<64 hex>`.
 * @throws {MoatError} `ERR_KNOWN_HOSTS` when it cannot be written.
 */
export function addKnownHost(file: string, host: string, fp: string): void {
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    fs.appendFileSync(file, `${host} ${fp}\n`, { mode: 0o600 });
  } catch (err) {
    throw new MoatError(
      "ERR_KNOWN_HOSTS",
      `Cannot write "${file}": ${(err as NodeJS.ErrnoException).code ?? err}`,
    );
  }
}
