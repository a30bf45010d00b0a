/**
 * `moat vault init`: sets a vault up for sealing and hands out, once, the
 * key that verifies it. See `docs/VAULT.md`, "Tamper evidence".
 *
 * @module
 */

import { readdir, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import { acquireLock, makeDir, removeTempFiles } from "../segment/fs.ts";
import { LOCK_FILE, SOURCES_DIR } from "./_format.ts";
import {
  ensureVaultDir,
  evolveKey,
  formatVerificationKey,
  INFO_FILE,
  KEY_FILE,
  newRandom,
  readVaultInfo,
  SEALS_DIR,
  VAULT_ID_BYTES,
  writeSealingKey,
  writeVaultInfo,
} from "./_seal.ts";
import { _openForFirstSeal } from "./store.ts";
import { loadCheckpointKey } from "./_checkpoints.ts";

/** What {@linkcode initVault} made. */
export interface InitVaultResult {
  /** The vault directory (absolute). */
  dir: string;
  /** The vault id, 32 hex digits. */
  id: string;
  /**
   * The verification key: keep it off the vault host. It is printed once and
   * stored nowhere; without it the vault's seals cannot be checked.
   */
  verificationKey: string;
  /**
   * The verifier key of the vault's checkpoint key: public, for shippers
   * (`moat ship --vault-key`), witnesses and `moat verify-proof`.
   */
  checkpointKey: string;
  /** True if the vault already existed (unsealed) and keeps its records and id. */
  existed: boolean;
}

/**
 * Creates a sealed vault, or turns an existing unsealed one into a sealed
 * one: makes a random epoch-0 key `k0`, stores only `k1 = HMAC(k0,
 * "moat-evolve")` as the sealing key, and returns `k0` (with the vault id)
 * as the verification key. It also makes the vault's checkpoint key
 * (`checkpoint.key`, 0600; kept if the vault has one) and returns its
 * verifier. A vault that already holds sources gets its
 * first seal (with `k1`) before it is marked sealed, so a sealed vault's
 * records are never without a seal.
 *
 * @example Usage
 * ```ts ignore
 * import { initVault } from "./init.ts";
 * const { verificationKey } = await initVault("/srv/moat-vault");
 * console.log(verificationKey); // moat-vk1-…: keep it elsewhere
 * ```
 *
 * @param dir The vault directory; created if missing.
 * @returns The vault id and the verification key.
 * @throws {MoatError} `ERR_EXISTS` if the vault is already sealed;
 * `ERR_NOT_VAULT` for a non-empty directory that is not a vault;
 * `ERR_LOCKED` while a server has it open.
 */
export async function initVault(dir: string): Promise<InitVaultResult> {
  const root = resolve(dir);
  await makeDir(root);
  const lock = await acquireLock(join(root, LOCK_FILE), `Vault "${root}"`);
  try {
    await removeTempFiles(join(root, INFO_FILE));
    await removeTempFiles(join(root, KEY_FILE));
    await ensureVaultDir(root);
    const found = await readVaultInfo(root);
    if (found?.sealed) {
      throw new MoatError(
        "ERR_EXISTS",
        `Vault "${root}" is already sealed: its verification key was printed when it was set up`,
        ExitCode.Exists,
      );
    }
    const id = found?.id ?? newRandom(VAULT_ID_BYTES);
    if (!found) await writeVaultInfo(root, { id, sealed: false });
    const { signer } = await loadCheckpointKey(
      root,
      id,
      found?.checkpointKey,
    );
    const checkpointKey = signer.verifier;
    const k0 = newRandom(32);
    const k1 = evolveKey(k0);
    // Seals and key first: a crash before the info file says "sealed"
    // leaves an unsealed vault that init can set up again, and seals left by
    // such a crash count for nothing (the vault is not sealed).
    await rm(join(root, SEALS_DIR), { recursive: true, force: true });
    await makeDir(join(root, SEALS_DIR), 0o700);
    await writeSealingKey(root, { vaultId: id, epoch: 1, key: k1 });
    k1.fill(0);
    const sources = (await readdir(join(root, SOURCES_DIR)))
      .filter((entry) => !entry.startsWith("."));
    if (sources.length > 0) {
      const vault = await _openForFirstSeal(root);
      try {
        await vault.seal();
      } finally {
        await vault.close();
      }
    }
    await writeVaultInfo(root, { id, sealed: true, checkpointKey });
    const verificationKey = formatVerificationKey(id, k0);
    k0.fill(0);
    return {
      dir: root,
      id: id.toHex(),
      verificationKey,
      checkpointKey,
      existed: !!found,
    };
  } finally {
    await lock.release();
  }
}
