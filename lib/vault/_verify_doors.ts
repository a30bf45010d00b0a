/**
 * The seals of a JetStream vault read into a directory (`moat vault export`,
 * or `vault verify nats://…`): each front door seals its own copy with its
 * own forward-secure key chain, and its seal log is kept under
 * `doors/<doorid>/seals/`. Each door's log gets the directory vault's own
 * seal checks (`verifySeals`) with the key that opens it; a record counts as
 * sealed when any trusted door's seal covers it, and every door's seal must
 * agree with the records (checked with the source, as for one seal log).
 * See `docs/VAULT.md`, "JetStream vault".
 *
 * @module
 */

import { readdir } from "node:fs/promises";
import { join } from "node:path";
import type { Checkpoint, VerifyProblem } from "./_verify_seals.ts";
import { verifySeals } from "./_verify_seals.ts";

/** The front doors' seal logs of a materialized stream: `DIR/doors/<doorid>/`. */
export const DOORS_DIR = "doors";

/** What the doors' seal logs say, merged. */
export interface DoorSeals {
  /** Front doors found. */
  doors: number;
  /** Seals that checked out, over all doors. */
  count: number;
  /** The latest trusted seal of any door. */
  last?: { time: number; epoch: number; door: string };
  /** Per source hash: every trusted seal of every door, by record count. */
  checkpoints: Map<string, Checkpoint[]>;
  /** Bad seal logs, doors no key opens, keys that open no door. */
  problems: VerifyProblem[];
}

/**
 * Lists the doors of a materialized stream.
 *
 * @param root The vault directory.
 * @returns Door ids, sorted; empty if there is no `doors/`.
 */
export async function listDoors(root: string): Promise<string[]> {
  try {
    return (await readdir(join(root, DOORS_DIR)))
      .filter((d) => !d.startsWith("."))
      .sort();
  } catch (error) {
    if ((error as { code?: string }).code === "ENOENT") return [];
    throw error;
  }
}

/**
 * Verifies every door's seal log. With keys, each door must be opened by
 * one of them (its first seal's HMAC verifies with it) and each key must
 * open a door; without keys, the logs are checked for consistency only
 * (as `verify` without `--key` checks one seal log).
 *
 * @param root The vault directory.
 * @param vaultId The vault id.
 * @param keys The `k[0]` of each verification key given.
 * @returns The merged seals and the problems.
 */
export async function verifyDoors(
  root: string,
  vaultId: Uint8Array,
  keys: readonly Uint8Array[],
): Promise<DoorSeals> {
  const doors = await listDoors(root);
  const out: DoorSeals = {
    doors: doors.length,
    count: 0,
    checkpoints: new Map(),
    problems: [],
  };
  const used = new Set<number>();
  for (const door of doors) {
    const dir = join(root, DOORS_DIR, door);
    let result: Awaited<ReturnType<typeof verifySeals>> | undefined;
    if (keys.length === 0) {
      result = await verifySeals(dir, vaultId, undefined);
    } else {
      for (let i = 0; i < keys.length; i++) {
        if (used.has(i)) continue;
        const r = await verifySeals(dir, vaultId, keys[i]);
        if (r.problem?.kind === "seal-mac" && r.count === 0) continue;
        used.add(i);
        result = r;
        break;
      }
    }
    if (result === undefined) {
      out.problems.push({
        kind: "seal-key",
        message:
          `Front door ${door}: no --key given opens its seals (its first seal does not verify with any of them), so nothing it sealed counts: give every door's verification key`,
        file: join(dir, "seals"),
      });
      continue;
    }
    if (result.problem) {
      out.problems.push({
        ...result.problem,
        message: `Front door ${door}: ${result.problem.message}`,
      });
    }
    if (result.prunes.size > 0 || result.pruneProblems.length > 0) {
      out.problems.push({
        kind: "prune",
        message:
          `Front door ${door}: its seals record a prune, but a JetStream vault is never pruned`,
        file: join(dir, "seals"),
      });
    }
    out.count += result.count;
    if (
      result.lastTime !== undefined &&
      (out.last === undefined || result.lastTime > out.last.time)
    ) {
      out.last = { time: result.lastTime, epoch: result.count, door };
    }
    for (const [hash, list] of result.checkpoints) {
      const merged = out.checkpoints.get(hash) ?? [];
      merged.push(...list);
      out.checkpoints.set(hash, merged);
    }
  }
  for (const list of out.checkpoints.values()) {
    list.sort((a, b) => a.lastSeq - b.lastSeq || a.time - b.time);
  }
  for (let i = 0; i < keys.length; i++) {
    if (used.has(i)) continue;
    out.problems.push({
      kind: "seal-key",
      message: `Verification key ${
        i + 1
      } opens no front door's seals in this vault: that door's seals are missing`,
    });
  }
  return out;
}
