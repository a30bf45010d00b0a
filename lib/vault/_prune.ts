/**
 * Pruning's files: the per-source prune marker `pruned.json`, and finding
 * in the seal log when records were first sealed (for segments whose index
 * entry has no seal time). The prune itself is `Vault.prune` in `store.ts`;
 * its checks are in `verify.ts`. See `docs/VAULT.md`, "Retention".
 *
 * @module
 */

import { join } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import { readTextIfExists, writeFileAtomic } from "../segment/fs.ts";
import { listSegments, readSegment } from "../segment/scanner.ts";
import { decodeSeal, SEAL_KIND, SEAL_MAGIC, SEALS_DIR } from "./_seal.ts";

/** The prune marker in a source directory. */
export const PRUNED_FILE = "pruned.json";

/** A source's prune marker: what its last prune removed. */
export interface PruneMarker {
  /** Records 1 to `seq` were removed. */
  seq: number;
  /** The chain link of record `seq`: the kept records chain on from it. */
  link: Uint8Array;
  /** The cut-off, ms since the epoch. */
  before: number;
  /** When the prune was made, ms since the epoch. */
  time: number;
  /** The epoch of the seal that carries the prune (sealed vaults). */
  epoch?: number;
  /**
   * Where the prune before this one ended, and its head: segments of
   * pruned records left by a prune cut short start right after it.
   */
  from?: { seq: number; link: Uint8Array };
}

/**
 * Reads a source's prune marker.
 *
 * @param dir The source directory.
 * @returns The marker, or undefined if the source was never pruned.
 * @throws {MoatError} `ERR_CORRUPT` if it is malformed; a system error if
 * it cannot be read.
 */
export async function readPruneMarker(
  dir: string,
): Promise<PruneMarker | undefined> {
  const file = join(dir, PRUNED_FILE);
  const text = await readTextIfExists(file);
  if (text === undefined) return undefined;
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = {};
  }
  const { version, seq, link, before, time, epoch, from } = parsed ?? {};
  const whole = (v: unknown) =>
    typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
  const hex = (v: unknown) => typeof v === "string" && /^[0-9a-f]{64}$/.test(v);
  const prior = from as { seq?: unknown; link?: unknown } | undefined;
  if (
    version !== 1 || !whole(seq) || (seq as number) < 1 || !whole(before) ||
    !whole(time) || !hex(link) || (epoch !== undefined && !whole(epoch)) ||
    (prior !== undefined &&
      (typeof prior !== "object" || prior === null || !whole(prior.seq) ||
        (prior.seq as number) < 1 || (prior.seq as number) >= (seq as number) ||
        !hex(prior.link)))
  ) {
    throw new MoatError(
      "ERR_CORRUPT",
      `Damaged prune marker "${file}"`,
      ExitCode.Integrity,
    );
  }
  return {
    seq: seq as number,
    link: Uint8Array.fromHex(link as string),
    before: before as number,
    time: time as number,
    ...(epoch !== undefined && { epoch: epoch as number }),
    ...(prior !== undefined && {
      from: {
        seq: prior.seq as number,
        link: Uint8Array.fromHex(prior.link as string),
      },
    }),
  };
}

/**
 * Replaces a source's prune marker atomically.
 *
 * @param dir The source directory.
 * @param marker What the prune removed.
 * @returns When it is durable.
 */
export async function writePruneMarker(
  dir: string,
  marker: PruneMarker,
): Promise<void> {
  const text = JSON.stringify({
    version: 1,
    seq: marker.seq,
    link: marker.link.toHex(),
    before: marker.before,
    time: marker.time,
    ...(marker.epoch !== undefined && { epoch: marker.epoch }),
    ...(marker.from !== undefined && {
      from: { seq: marker.from.seq, link: marker.from.link.toHex() },
    }),
  }) + "\n";
  await writeFileAtomic(
    join(dir, PRUNED_FILE),
    new TextEncoder().encode(text),
  );
}

/**
 * Finds, in the seal log, the time of the first seal that covered each of
 * some records: the earliest seal whose count for the source reaches the
 * record. Reads the seal log from its newest segment back, only as far as
 * needed. Seal HMACs are not checked (the writer trusts its own seal log;
 * `verify` checks what a prune claims).
 *
 * @param root The vault directory.
 * @param wants Per source hash (hex), the sequence numbers asked about.
 * @param options `stopped` ends the search early (between seal segments)
 * once it returns true; what was found so far is returned.
 * @returns Per source hash, the time for each record a seal covers (records
 * no seal covers are left out).
 * @throws {MoatError} `ERR_CORRUPT` for a damaged seal segment.
 */
export async function findFirstCovers(
  root: string,
  wants: ReadonlyMap<string, readonly number[]>,
  options: { stopped?: () => boolean } = {},
): Promise<Map<string, Map<number, number>>> {
  const found = new Map<string, Map<number, number>>();
  let open: { hash: string; seq: number }[] = [];
  for (const [hash, seqs] of wants) {
    found.set(hash, new Map());
    for (const seq of seqs) open.push({ hash, seq });
  }
  const segments = await listSegments(join(root, SEALS_DIR));
  for (let i = segments.length - 1; i >= 0 && open.length > 0; i--) {
    if (options.stopped?.()) break;
    const segment = segments[i]!;
    // Per seal of this segment, in order: its time and the counts asked about.
    const seals: { time: number; counts: Map<string, number> }[] = [];
    for await (
      const batch of readSegment(segment.path, {
        magic: SEAL_MAGIC,
        kind: SEAL_KIND,
        firstSeq: segment.firstSeq,
        last: i === segments.length - 1,
      })
    ) {
      for (const record of batch) {
        const seal = decodeSeal(record.bytes);
        if (typeof seal === "string") continue;
        const counts = new Map<string, number>();
        for (const entry of seal.entries) {
          const hash = entry.source.toHex();
          if (wants.has(hash)) counts.set(hash, entry.lastSeq);
        }
        seals.push({ time: seal.time, counts });
      }
    }
    const still: { hash: string; seq: number }[] = [];
    for (const want of open) {
      // Counts only grow: the first seal here that covers it.
      const at = seals.findIndex((s) =>
        (s.counts.get(want.hash) ?? 0) >= want.seq
      );
      if (at === -1) continue;
      found.get(want.hash)!.set(want.seq, seals[at]!.time);
      // Covered by this segment's first seal: an older one may cover it too.
      if (at === 0) still.push(want);
    }
    open = still;
  }
  return found;
}
