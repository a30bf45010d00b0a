// Helpers shared by the vault tests.
import { Buffer } from "node:buffer";
import fs from "node:fs";
import path from "node:path";
import { encodeSegmentHeader } from "../lib/segment/codec.ts";
import { encodeVaultRecords, VAULT_MAGIC } from "../lib/vault/_format.ts";
import { sourceDirName } from "../lib/vault/_key.ts";
import type { SourceKey } from "../lib/vault/_key.ts";
import { openVault, type Vault } from "../lib/vault/store.ts";
import { tempDir } from "./_e2e.ts";

/**
 * Writes a source directory as an earlier moat left it: `source.json` with
 * the key as given (no check), and one segment of unchained records
 * numbered from 1 (each `{ line, recvTs }`). For keys the vault no longer
 * creates, and for forgeries.
 */
export function writeLegacySource(
  vaultDir: string,
  key: SourceKey,
  lines: { line: Uint8Array | string; recvTs?: number; partial?: boolean }[],
): string {
  const dir = path.join(vaultDir, "sources", sourceDirName(key));
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "source.json"), JSON.stringify(key) + "\n");
  const parts: Uint8Array[] = [encodeSegmentHeader(VAULT_MAGIC, 1)];
  lines.forEach((l, i) => {
    const line = typeof l.line === "string"
      ? new TextEncoder().encode(l.line)
      : l.line;
    parts.push(
      encodeVaultRecords(
        [{ seq: i + 1, ts: 1, line, partial: l.partial ?? false }],
        l.recvTs ?? 1,
      ),
    );
  });
  fs.writeFileSync(
    path.join(dir, "00000000000000000001.seg"),
    Buffer.concat(parts),
  );
  return dir;
}

/**
 * Open file descriptors of this process (Linux; undefined elsewhere) that
 * name a file or directory under `under` (all of them if not given).
 */
export function openFds(under?: string): number | undefined {
  let fds: string[];
  try {
    fds = fs.readdirSync("/proc/self/fd");
  } catch {
    return undefined;
  }
  if (under === undefined) return fds.length;
  let n = 0;
  for (const fd of fds) {
    try {
      const target = fs.readlinkSync(`/proc/self/fd/${fd}`);
      if (target === under || target.startsWith(`${under}/`)) n++;
    } catch {
      // Closed meanwhile (the one readdirSync used, for example).
    }
  }
  return n;
}

/** A vault from {@linkcode testVault}. */
export interface TestVault extends AsyncDisposable {
  vault: Vault;
  /** The vault's directory. */
  dir: string;
  /** The temporary directory it is in, for files beside it. */
  root: string;
}

/**
 * A real vault (sealing at once) in a new temporary directory, closed and
 * removed on dispose.
 *
 * @param prefix The temporary directory's name prefix.
 * @returns The vault.
 */
export async function testVault(
  prefix = "moat-vault-test-",
): Promise<TestVault> {
  const tmp = tempDir(prefix);
  const dir = path.join(tmp.dir, "vault");
  const vault = await openVault(dir, { sealIntervalMs: 0 });
  return {
    vault,
    dir,
    root: tmp.dir,
    async [Symbol.asyncDispose]() {
      await vault.close();
      tmp[Symbol.dispose]();
    },
  };
}

/**
 * A vault whose sources' appends stay in flight until the test fails them:
 * `appended` resolves at the first append, `fail` rejects it (if it was
 * made; again does nothing).
 */
export function stalledVault(base: Vault): {
  vault: Vault;
  appended: Promise<void>;
  fail: (err: unknown) => void;
} {
  let fail: ((err: unknown) => void) | undefined;
  let called!: () => void;
  const appended = new Promise<void>((resolve) => (called = resolve));
  const vault: Vault = Object.create(base, {
    source: {
      value: (key: Parameters<Vault["source"]>[0]) => {
        const source = base.source(key);
        return {
          key: source.key,
          id: source.id,
          lastSeq: source.lastSeq,
          acceptedSeq: source.acceptedSeq,
          append: () => {
            called();
            return new Promise((_, reject) => (fail = reject));
          },
        };
      },
    },
  });
  return { vault, appended, fail: (err: unknown) => fail?.(err) };
}
