/**
 * `moat vault verify`: checks every record's checksum, sequence and chain
 * link, every seal's HMAC against the verification key, and that nothing a
 * sealed vault must hold is missing. Reads the whole vault; takes no lock.
 * Fails closed: whatever is absent, unreadable or unexpected is damage. See
 * `docs/VAULT.md`, "Verification".
 *
 * @module
 */

import { readdir, readFile, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import { getU64, scanSegment } from "../segment/codec.ts";
import { _equal, chainGenesis, checkLink } from "./_chain.ts";
import {
  CHAIN_LINK_BYTES,
  FLAG_CHAIN,
  FLAG_PARTIAL,
  MARKER_FILE,
  MARKER_TEXT,
  readSourceKey,
  SOURCES_DIR,
  VAULT_KIND,
  VAULT_LINE_OFFSET,
  VAULT_MAGIC,
} from "./_format.ts";
import { matchesSource, sourceHash, sourceLabel } from "./_key.ts";
import type { SourceKey } from "./_key.ts";
import {
  parseVerificationKey,
  readSealingKey,
  readVaultInfo,
  SEALS_DIR,
} from "./_seal.ts";
import type { SealingKey } from "./_seal.ts";
import { readPruneMarker } from "./_prune.ts";
import { openCheckpoint, parseVerifier } from "../checkpoint.ts";
import type { Verifier } from "../checkpoint.ts";
import { checkpointOrigin, readCheckpointLog } from "./_checkpoints.ts";
import { checkWitnessed } from "../witness/verify.ts";
import { TreeCheck } from "./_verify_tree.ts";
import type { OutsideCheckpoint, TreeReport } from "./_verify_tree.ts";
import { listDoors, verifyDoors } from "./_verify_doors.ts";
import { readStreamProblems, STREAM_FILE } from "./_stream_file.ts";
import {
  checkKeyFile,
  checkPruneRules,
  listForCheck,
  readForCheck,
  stopKind,
  unreadableProblem,
  verifySeals,
} from "./_verify_seals.ts";
import type {
  Checkpoint,
  SealedPrune,
  VerifyProblem,
  VerifyProblemKind,
} from "./_verify_seals.ts";

export type { VerifyProblem, VerifyProblemKind } from "./_verify_seals.ts";
export type { TreeReport } from "./_verify_tree.ts";

/** The seal interval assumed for a vault that recorded none: 60 s. */
export const DEFAULT_VERIFY_INTERVAL_MS = 60_000;
/** Least slack past the seal interval before an unsealed record is damage. */
const MIN_GRACE_MS = 60_000;

/** What a source's prunes removed, as verify found them. */
export interface VerifyPruned {
  /** Records 1 to this one were pruned. */
  throughSeq: number;
  /** The cut-off of the last prune: what it removed was first sealed (unsealed vault: received) before it. */
  before: number;
  /** When the last prune was made. */
  time: number;
  /** The seal that records it (sealed vaults). */
  epoch?: number;
  /**
   * Pruned records still all on disk (a prune cut short before it deleted
   * any; the writer deletes them at its next open); checked to chain on to
   * the prune's head.
   */
  pending?: number;
}

/** One source's result. */
export interface VerifySource {
  /** The source's label. */
  label: string;
  /** The source's directory name. */
  id: string;
  /** Records read up to the first problem (or all), after any pruned ones. */
  records: number;
  /** Sequence number of the last record read (0 if none). */
  lastSeq: number;
  /** Records pruned from the start of the source, if any. */
  pruned?: VerifyPruned;
  /** Highest sequence number covered by a verified seal. */
  sealedSeq: number;
  /** Records after `sealedSeq`: chained but not sealed. */
  unsealed: number;
  /**
   * Bytes at the end of the last segment, after every sealed record, that
   * are not a whole valid record: a write in progress or a torn one (opening
   * the vault cuts them). Not verified, and not counted as damage.
   */
  torn?: { file: string; offset: number; bytes: number; reason: string };
  /** The Merkle tree recomputed from the records, and the checkpoints checked against it. */
  tree?: TreeReport;
}

/** The result of {@linkcode verifyVault}. */
export interface VerifyReport {
  /** True only if nothing is damaged (an unsealed tail is not damage). */
  ok: boolean;
  /** The vault id (from the key if given). */
  id: string;
  /** True if a key was given and seal HMACs were checked. */
  keyed: boolean;
  /** Seals that verified. */
  seals: number;
  /** Time of the last verified seal, ms since the epoch. */
  lastSealTime?: number;
  /** The epoch of the sealing key file (sealed vaults). */
  keyEpoch?: number;
  /** The seal interval the unsealed tail was judged by (from `vault.json`, else 60 s). */
  sealIntervalMs: number;
  /** Per-source results. */
  sources: VerifySource[];
  /** Records after the last verified seal, over all sources. */
  unsealed: number;
  /** Problems; the vault's and the seal log's first, then at most one per source. */
  problems: VerifyProblem[];
}

/** Options for {@linkcode verifyVault}. */
export interface VerifyOptions {
  /** The verification key printed by `moat vault init`; without it only chains are checked. */
  key?: string;
  /**
   * More verification keys: a JetStream vault read into a directory holds
   * the seal log of each front door (`doors/<doorid>/seals/`), each sealed
   * with its own key; give each door's. See `_verify_doors.ts`.
   */
  keys?: readonly string[];
  /**
   * Check only the sources this picks (a name or a label, as in
   * `readRecords`); the seals are always checked, and sealed sources that
   * are missing are then not reported.
   */
  source?: string;
  /**
   * The time the check counts as running at, ms since the epoch: records
   * received at or after it arrived while verifying, and are not held
   * against the seal interval.
   * @default {Date.now()}
   */
  now?: number;
  /**
   * The least retention the vault is run with, in milliseconds: a prune
   * whose cut-off is less than this before the prune itself is damage
   * (kind `prune`). Without it, any prune that keeps the other rules is
   * accepted and reported.
   */
  minRetainMs?: number;
  /** Told how far verification got, after each segment and every few thousand records. */
  onProgress?: (progress: VerifyProgress) => void;
  /**
   * Signed checkpoints held outside the vault (by shippers, a witness, or
   * saved by hand): each must be signed by the vault's checkpoint key and
   * be a size of its source's tree with the same root. One the vault does
   * not extend is a `checkpoint` problem naming its `file`.
   */
  checkpoints?: readonly { file: string; note: string }[];
  /**
   * Witnesses whose cosignatures are required (`--witness-key`): every
   * cosignature in a source's checkpoint log must verify, its latest
   * checkpoint must be cosigned by each of them once older than
   * `witnessGraceMs`, and each cosigned checkpoint is held to the records
   * like a checkpoint in `checkpoints`.
   */
  witnesses?: readonly Verifier[];
  /**
   * How long a checkpoint (or a new source) may wait for its cosignatures.
   * @default {the seal interval's grace, at least 10 minutes}
   */
  witnessGraceMs?: number;
}

/** How far {@linkcode verifyVault} got. */
export interface VerifyProgress {
  /** Records checked so far. */
  records: number;
  /** Bytes of segment files checked so far. */
  bytes: number;
  /** Bytes of the segment files to check, as listed when it started. */
  totalBytes: number;
}

/** What unsealed records of a sealed vault may be (see {@linkcode _tailProblem}). */
interface TailRule {
  /** Time and epoch of the last trusted seal; undefined if there is none. */
  last?: { time: number; epoch: number };
  intervalMs: number;
  now: number;
}

/**
 * Verifies a vault: every record's checksum, sequence number and chain link,
 * each seal's HMAC (with `k[n]` derived from the verification key), that
 * seals are consecutive, that every source's chain head at each seal
 * matches the seal, and, for a sealed vault, that nothing a seal should
 * cover is missing or unsealed: the key file's epoch must not be ahead of
 * the seal log, and unsealed records must be newer than the last seal by
 * less than the interval plus a grace.
 *
 * @example Usage
 * ```ts ignore
 * import { verifyVault } from "./verify.ts";
 * const report = await verifyVault("/srv/moat-vault", { key: "moat-vk1-…" });
 * if (!report.ok) console.log(report.problems[0]!.message);
 * ```
 *
 * @param dir The vault directory.
 * @param options The verification key, a source filter, the time.
 * @returns The report.
 * @throws {MoatError} `ERR_NOT_VAULT` if `dir` is not a vault.
 * @throws {TypeError} For a malformed key.
 */
export async function verifyVault(
  dir: string,
  options: VerifyOptions = {},
): Promise<VerifyReport> {
  const now = options.now ?? Date.now();
  const root = resolve(dir);
  const marker = await readFile(join(root, MARKER_FILE), "utf8").catch(
    () => undefined,
  );
  if (marker !== MARKER_TEXT) {
    throw new MoatError(
      "ERR_NOT_VAULT",
      `Cannot verify "${root}": not a moat vault`,
      ExitCode.Usage,
    );
  }
  const keys = [
    ...(options.key === undefined ? [] : [options.key]),
    ...(options.keys ?? []),
  ].map(parseVerificationKey);
  const key = keys[0];
  const problems: VerifyProblem[] = [];
  const info = await readVaultInfo(root).catch((error) => {
    problems.push({ kind: "vault", message: (error as Error).message });
    return undefined;
  });
  // A JetStream vault read into this directory: unsealed itself, with the
  // seal log of each front door beside it.
  const doorMode = info?.sealed === false &&
    (await listDoors(root).catch(() => [])).length > 0;
  const vaultId = key?.vaultId ?? info?.id ?? new Uint8Array(16);
  if (info === undefined && problems.length === 0) {
    problems.push({
      kind: "vault",
      message: "The vault has no identity file (vault.json)",
    });
  }
  for (const k of info ? keys : []) {
    if (_equal(k.vaultId, info!.id)) continue;
    problems.push({
      kind: "vault",
      message: `The key belongs to vault ${k.vaultId.toHex()}, this is vault ${
        info!.id.toHex()
      }`,
    });
  }
  if (keys.length > 1 && !doorMode) {
    problems.push({
      kind: "vault",
      message:
        `${keys.length} keys were given, but this vault has one seal log (only a JetStream vault read into a directory has one per front door)`,
    });
  }
  if (key && info && !info.sealed && !doorMode) {
    const stream = await stat(join(root, STREAM_FILE)).then(
      () => true,
      () => false,
    );
    problems.push(
      stream
        ? {
          kind: "seal-key",
          message:
            "The stream holds no front door's seals, but a key was given: they were lost, or never published",
        }
        : {
          kind: "vault",
          message: "The vault is not sealed (vault.json), but a key was given",
        },
    );
  }
  // Without a readable vault.json, a key says the vault is meant to be sealed.
  const sealed = doorMode || (info?.sealed ?? key !== undefined);
  const intervalMs = info?.sealIntervalMs ?? DEFAULT_VERIFY_INTERVAL_MS;

  // The key file before the seal log: the server moves the key on only once
  // the seal before it is durable, so a seal log read afterwards holds every
  // seal the key file counts, even while the server runs.
  // (A stream's seals cannot be removed, and a door's key file stays on
  // its host: no key file to check.)
  let keyFile: SealingKey | undefined;
  if (sealed && !doorMode) {
    try {
      keyFile = await readSealingKey(root, vaultId);
    } catch (error) {
      problems.push({ kind: "seal-key", message: (error as Error).message });
    }
  }
  let lastEpoch: number | undefined;
  let seals: SealState;
  if (doorMode) {
    const doors = await verifyDoors(root, vaultId, keys.map((k) => k.k0));
    problems.push(...doors.problems);
    lastEpoch = doors.last?.epoch;
    seals = {
      count: doors.count,
      found: true,
      checkpoints: doors.checkpoints,
      prunes: new Map(),
      pruneProblems: [],
      ...(doors.last && { lastTime: doors.last.time }),
    };
  } else {
    seals = await verifySeals(root, vaultId, key?.k0);
  }
  problems.push(...await readStreamProblems(root));
  if (seals.problem) problems.push(seals.problem);
  if (sealed && !seals.problem && !seals.found) {
    problems.push({
      kind: "seal",
      message: `The seal log of a sealed vault is missing ("${
        join(root, SEALS_DIR)
      }")`,
    });
  }
  const trusted = sealed && seals.problem === undefined;
  if (trusted && keyFile) {
    const bad = checkKeyFile(keyFile, seals.count, key?.k0);
    if (bad) problems.push({ ...bad, file: join(root, "seal.key") });
  }
  const tail: TailRule | undefined = trusted
    ? {
      intervalMs,
      now,
      ...(seals.lastTime !== undefined &&
        { last: { time: seals.lastTime, epoch: lastEpoch ?? seals.count } }),
    }
    : undefined;

  const graceMs = Math.max(intervalMs, MIN_GRACE_MS);
  const sourcesDir = join(root, SOURCES_DIR);
  let ids: string[] = [];
  try {
    ids = (await readdir(sourcesDir)).filter((id) => !id.startsWith("."));
  } catch (error) {
    problems.push(unreadableProblem(sourcesDir, error, "sources directory"));
  }
  const entries: { key: SourceKey; id: string; hash: string }[] = [];
  const sourceProblems: VerifyProblem[] = [];
  for (const id of ids) {
    try {
      const key = await readSourceKey(join(sourcesDir, id), id);
      entries.push({ key, id, hash: (sourceHash(key)).toHex() });
    } catch (error) {
      sourceProblems.push({
        kind: "header",
        message: (error as Error).message,
        file: join(sourcesDir, id),
      });
    }
  }
  entries.sort((a, b) =>
    sourceLabel(a.key) < sourceLabel(b.key)
      ? -1
      : sourceLabel(a.key) > sourceLabel(b.key)
      ? 1
      : 0
  );
  const filter = options.source;
  const picked = entries.filter((entry) =>
    filter === undefined || matchesSource(entry.key, filter)
  );
  const labels = new Map(entries.map((e) => [e.hash, sourceLabel(e.key)]));

  // The Merkle trees' key, and the checkpoints held outside: each must be
  // signed by it and name a source of this vault.
  let verifier: Verifier | undefined;
  if (info?.checkpointKey !== undefined) {
    try {
      verifier = parseVerifier(info.checkpointKey);
    } catch (error) {
      problems.push({
        kind: "vault",
        message: `vault.json names a malformed checkpoint key: ${
          (error as Error).message
        }`,
      });
    }
  }
  const outside = new Map<string, OutsideCheckpoint[]>();
  for (const { file, note } of options.checkpoints ?? []) {
    const bad = (message: string) =>
      problems.push({ kind: "checkpoint", message, file });
    if (verifier === undefined) {
      bad(
        `Checkpoint "${file}" cannot be checked: the vault has no checkpoint key (vault.json names none)`,
      );
      continue;
    }
    let checkpoint;
    try {
      checkpoint = openCheckpoint(note, verifier);
    } catch (error) {
      bad(
        `Checkpoint "${file}" is not one of this vault's: ${
          (error as Error).message
        } (the vault's key is ${verifier.text})`,
      );
      continue;
    }
    const m = /^moat\/([0-9a-f]{32})\/([0-9a-f]{64})$/.exec(checkpoint.origin);
    if (m === null || m[1] !== vaultId.toHex()) {
      bad(
        `Checkpoint "${file}" is of ${checkpoint.origin}, not of a source of vault ${vaultId.toHex()}`,
      );
      continue;
    }
    const hash = m[2]!;
    if (!labels.has(hash)) {
      bad(
        `Checkpoint "${file}" covers ${checkpoint.size} records of source ${hash}, which the vault does not hold: it was removed, or the vault rolled back to before it existed`,
      );
      continue;
    }
    const list = outside.get(hash) ?? [];
    list.push({ file, checkpoint });
    outside.set(hash, list);
  }

  // Required witnesses: their cosignatures in each source's checkpoint log
  // must verify and keep up, and what they cosigned must hold for the
  // records. Fails closed: no checkpoint key, an unreadable log, or a source
  // older than the grace without any logged checkpoint is damage.
  const witnesses = options.witnesses ?? [];
  if (witnesses.length > 0) {
    const witnessGraceMs = options.witnessGraceMs ??
      Math.max(graceMs, 10 * 60_000);
    if (verifier === undefined) {
      problems.push({
        kind: "witness",
        message:
          "--witness-key needs the vault's checkpoint key, and vault.json names none",
      });
    }
    for (const entry of verifier === undefined ? [] : picked) {
      const label = sourceLabel(entry.key);
      const dirOf = join(sourcesDir, entry.id);
      const bad = (message: string) =>
        problems.push({
          kind: "witness",
          message: `${label}: ${message}`,
          source: label,
        });
      let logged;
      let created;
      try {
        logged = await readCheckpointLog(dirOf);
        created = (await stat(join(dirOf, "source.json"))).mtimeMs;
      } catch (error) {
        bad(`its checkpoint log cannot be read: ${(error as Error).message}`);
        continue;
      }
      if (logged.length === 0 && now - created > witnessGraceMs) {
        bad(
          `no checkpoint is logged, so no witness cosigned one (the source is older than the ${
            Math.round(witnessGraceMs / 1000)
          } s grace)`,
        );
        continue;
      }
      const report = checkWitnessed(logged, {
        vault: verifier!,
        witnesses,
        now,
        graceMs: witnessGraceMs,
      });
      for (const p of report.problems) bad(p);
      const list = outside.get(entry.hash) ?? [];
      for (const c of report.cosigned) {
        list.push({
          file: `checkpoint of size ${c.size} cosigned by witness ${c.witness}`,
          checkpoint: {
            origin: checkpointOrigin(vaultId, sourceHash(entry.key)),
            size: c.size,
            root: c.root,
          },
        });
      }
      outside.set(entry.hash, list);
    }
  }

  // The prunes every trusted seal (sealed vault) or prune marker (unsealed
  // vault) records, checked against the rules; each source is then checked
  // from its last prune on.
  const pruneState = async (seals: SealState) => {
    const starts = new Map<string, _Start>();
    const found: VerifyProblem[] = [];
    if (sealed) {
      found.push(...seals.pruneProblems.map((p) => _named(p, labels)));
      for (const [hash, list] of seals.prunes) {
        const broken = checkPruneRules(
          list,
          seals.checkpoints.get(hash) ?? [],
          { now, graceMs, minRetainMs: options.minRetainMs },
        );
        for (const { prune, reason } of broken) {
          const label = labels.get(hash) ?? `source ${hash}`;
          found.push({
            kind: "prune",
            message:
              `${label}: the prune of records 1 to ${prune.seq} in seal ${prune.epoch} ${reason}`,
            source: label,
            epoch: prune.epoch,
            file: prune.file,
            offset: prune.offset,
          });
        }
        starts.set(hash, _startOf(list));
      }
      return { starts, found };
    }
    for (const entry of picked) {
      const dirOf = join(sourcesDir, entry.id);
      try {
        const marker = await readPruneMarker(dirOf);
        if (marker) {
          starts.set(entry.hash, {
            seq: marker.seq,
            link: marker.link,
            pruned: {
              throughSeq: marker.seq,
              before: marker.before,
              time: marker.time,
            },
            points: new Map([
              [marker.seq, marker.link],
              ...(marker.from
                ? [[marker.from.seq, marker.from.link]] as const
                : []),
            ]),
          });
        }
      } catch (error) {
        found.push({
          kind: "prune",
          message: `${sourceLabel(entry.key)}: ${(error as Error).message}`,
          source: sourceLabel(entry.key),
          file: dirOf,
        });
      }
    }
    return { starts, found };
  };
  const state = await pruneState(seals);
  problems.push(...state.found);
  const starts = state.starts;

  const progress = options.onProgress && {
    report: options.onProgress,
    records: 0,
    bytes: 0,
    totalBytes: await _totalBytes(sourcesDir, picked),
  };
  const check = async (
    entry: (typeof entries)[number],
    seals: SealState,
    start: _Start | undefined,
  ) => {
    const dirOf = join(sourcesDir, entry.id);
    const tree = await TreeCheck.open(dirOf, {
      label: sourceLabel(entry.key),
      sourceHash: sourceHash(entry.key),
      origin: checkpointOrigin(vaultId, sourceHash(entry.key)),
      verifier,
      outside: outside.get(entry.hash) ?? [],
    });
    const result = await _verifySource(dirOf, {
      key: entry.key,
      genesis: chainGenesis(vaultId, entry.key),
      checkpoints: seals.checkpoints.get(entry.hash) ?? [],
      tail,
      start,
      points: start?.points ?? new Map(),
      progress,
      tree,
    });
    return { ...result, tree: tree.finish() };
  };
  const results = new Map<string, Awaited<ReturnType<typeof check>>>();
  for (const entry of picked) {
    results.set(
      entry.hash,
      await check(entry, seals, starts.get(entry.hash)),
    );
  }
  // A prune that ran while verifying removes segments that the seals (or
  // markers) read at the start did not yet name: check such sources again,
  // once, against the prunes recorded now.
  const moved = picked.filter((entry) => {
    const kind = results.get(entry.hash)!.problem?.kind;
    return kind === "gap" || kind === "sequence" || kind === "unreadable";
  });
  if (moved.length > 0) {
    const again = await verifySeals(root, vaultId, key?.k0);
    const next = await pruneState(again);
    let rechecked = false;
    for (const entry of moved) {
      const start = next.starts.get(entry.hash);
      if (start?.seq === starts.get(entry.hash)?.seq) continue;
      rechecked = true;
      results.set(entry.hash, await check(entry, again, start));
      if (start) starts.set(entry.hash, start);
      else starts.delete(entry.hash);
    }
    if (rechecked) {
      // What is wrong with the prunes recorded since.
      const seen = new Set(problems.map((p) => p.message));
      problems.push(...next.found.filter((p) => !seen.has(p.message)));
    }
  }

  const sources: VerifySource[] = [];
  const seen = new Set<string>();
  for (const entry of picked) {
    seen.add(entry.hash);
    const result = results.get(entry.hash)!;
    const start = starts.get(entry.hash);
    const sealedSeq = result.sealedSeq;
    sources.push({
      label: sourceLabel(entry.key),
      id: entry.id,
      records: result.records,
      lastSeq: result.lastSeq,
      ...(start && {
        pruned: {
          ...start.pruned,
          ...(result.pending && { pending: result.pending }),
        },
      }),
      sealedSeq,
      unsealed: Math.max(0, result.lastSeq - sealedSeq),
      ...(result.torn && { torn: result.torn }),
      tree: result.tree.report,
    });
    if (result.problem) sourceProblems.push(result.problem);
    // The tree is checked only as far as the records are intact.
    const treeProblems = result.problem
      ? result.tree.problems.filter((p) => p.kind === "checkpoint")
      : result.tree.problems;
    sourceProblems.push(...treeProblems);
  }
  for (const [hash, checkpoints] of seals.checkpoints) {
    if (seen.has(hash) || filter !== undefined) continue;
    const last = checkpoints.at(-1)!;
    sourceProblems.push({
      kind: "missing-source",
      message:
        `A source sealed with ${last.lastSeq} records in seal ${last.epoch} is missing (source hash ${hash})`,
      epoch: last.epoch,
    });
  }
  problems.push(...sourceProblems);
  let unsealed = 0;
  for (const source of sources) unsealed += source.unsealed;
  return {
    ok: problems.length === 0,
    id: vaultId.toHex(),
    keyed: keys.length > 0,
    seals: seals.count,
    ...(seals.lastTime !== undefined && { lastSealTime: seals.lastTime }),
    ...(keyFile && { keyEpoch: keyFile.epoch }),
    sealIntervalMs: intervalMs,
    sources,
    unsealed,
    problems,
  };
}

type SealState = Awaited<ReturnType<typeof verifySeals>>;

/** Where a source's check starts: after its last prune. */
interface _Start {
  seq: number;
  link: Uint8Array;
  pruned: VerifyPruned;
  /** Where every prune of the source ended, and the head there. */
  points: Map<number, Uint8Array>;
}

function _startOf(prunes: readonly SealedPrune[]): _Start {
  const last = prunes.reduce((a, b) => (b.seq > a.seq ? b : a));
  return {
    seq: last.seq,
    link: last.link,
    pruned: {
      throughSeq: last.seq,
      before: last.before,
      time: last.time,
      epoch: last.epoch,
    },
    points: new Map(prunes.map((p) => [p.seq, p.link])),
  };
}

/** A seal-log prune problem with the source's label instead of its hash. */
function _named(
  problem: VerifyProblem,
  labels: ReadonlyMap<string, string>,
): VerifyProblem {
  for (const [hash, label] of labels) {
    if (problem.message.includes(`source ${hash}`)) {
      return {
        ...problem,
        message: problem.message.replace(`source ${hash}`, `"${label}"`),
        source: label,
      };
    }
  }
  return problem;
}

/** Bytes of the segment files of some sources (for progress). */
async function _totalBytes(
  sourcesDir: string,
  entries: readonly { id: string }[],
): Promise<number> {
  let total = 0;
  for (const entry of entries) {
    const listed = await listForCheck(join(sourcesDir, entry.id));
    if ("error" in listed) continue;
    for (const segment of listed.segments) {
      total += await stat(segment.path).then((s) => s.size, () => 0);
    }
  }
  return total;
}

/**
 * Judges a record after its source's last trusted seal in a sealed vault.
 * Such a record is an unsealed tail only if the server cannot have sealed
 * it yet: received after verification started, or newer than the last seal
 * by less than the interval plus a grace (the interval, at least 60 s), and
 * not older than the last seal by more than the grace. A sealed vault with
 * no seal at all has no unsealed tail: `init` seals whatever a vault
 * holds, and the server seals at start-up before it takes a record.
 *
 * @returns Why the record is damage, or undefined.
 */
function _tailProblem(recvTs: number, rule: TailRule): string | undefined {
  if (recvTs >= rule.now) return undefined;
  const last = rule.last;
  if (last === undefined) {
    return "no seal covers it, and the seal log of this sealed vault holds no seal (seals were removed)";
  }
  const grace = Math.max(rule.intervalMs, MIN_GRACE_MS);
  const since = `seal ${last.epoch} at ${new Date(last.time).toISOString()}`;
  if (recvTs >= last.time + rule.intervalMs + grace) {
    return `it was received at ${
      new Date(recvTs).toISOString()
    }, later than the next seal was due after ${since} (seals every ${
      rule.intervalMs / 1000
    } s), but no seal covers it: seals were removed, or the server stopped sealing`;
  }
  if (recvTs < last.time - grace) {
    return `it was received at ${
      new Date(recvTs).toISOString()
    }, before ${since}, but no seal covers it`;
  }
  return undefined;
}

async function _verifySource(
  dir: string,
  options: {
    key: SourceKey;
    genesis: Uint8Array;
    checkpoints: Checkpoint[];
    tail: TailRule | undefined;
    /** The last prune: the check starts after it. */
    start: _Start | undefined;
    /** Where earlier prunes ended, with their heads (for pruned records still on disk). */
    points: ReadonlyMap<number, Uint8Array>;
    /** The source's Merkle tree check, fed every record whose link holds. */
    tree?: TreeCheck;
    progress:
      | {
        report: (progress: VerifyProgress) => void;
        records: number;
        bytes: number;
        totalBytes: number;
      }
      | undefined;
  },
): Promise<{
  records: number;
  lastSeq: number;
  sealedSeq: number;
  pending?: number;
  problem?: VerifyProblem;
  torn?: VerifySource["torn"];
}> {
  const label = sourceLabel(options.key);
  const start = options.start;
  const base = start?.seq ?? 0;
  // Seals over pruned records cannot be checked any more; the prune's head
  // stands in for them (checked against them in checkPruneRules).
  const checkpoints = options.checkpoints.filter((c) => c.lastSeq > base);
  const sealedSeq = Math.max(base, options.checkpoints.at(-1)?.lastSeq ?? 0);
  const progress = options.progress;
  let prev = start?.link ?? options.genesis;
  let expect = base + 1;
  let cp = 0;
  let sealedFrom = base + 1;
  let pending = 0;
  let last: { path: string; end: number } | undefined;
  let torn: VerifySource["torn"];
  const done = () => ({
    records: Math.max(0, expect - 1 - base),
    lastSeq: expect - 1,
    sealedSeq,
    ...(pending > 0 && { pending }),
  });
  const problem = (
    kind: VerifyProblemKind,
    message: string,
    where: { seq: number; file: string; offset: number },
    extra: Partial<VerifyProblem> = {},
  ) => ({
    ...done(),
    problem: {
      kind,
      message:
        `${label}: ${message} (record ${where.seq}, "${where.file}" at byte ${where.offset})`,
      source: label,
      ...where,
      ...extra,
    },
  });
  const listed = await listForCheck(dir);
  if ("error" in listed) {
    const bad = unreadableProblem(dir, listed.error, "source directory");
    return problem("unreadable", bad.message, {
      seq: expect,
      file: dir,
      offset: 0,
    });
  }
  const segments = listed.segments;
  const oldest = segments[0];
  if (start !== undefined && oldest !== undefined && oldest.firstSeq <= base) {
    // Pruned records still on disk: a prune recorded but cut short before
    // it deleted them. They must run on from an earlier prune (or the
    // genesis) to this prune's head; a prune cut short half-way (some of
    // its segments gone) cannot be told from a deletion, and the writer
    // finishes it at its next open.
    const from = oldest.firstSeq - 1;
    const link = from === 0 ? options.genesis : options.points.get(from);
    if (link === undefined) {
      return problem(
        "gap",
        `segment starts at record ${oldest.firstSeq}, but no prune ended at record ${from} (records 1 to ${base} were pruned: if that prune was cut short, moat vault prune, or the server at its next start, removes the rest)`,
        { seq: base + 1, file: oldest.path, offset: 0 },
      );
    }
    prev = link;
    expect = from + 1;
    sealedFrom = expect;
    pending = base - from;
  }
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]!;
    const isLast = i === segments.length - 1;
    if (segment.firstSeq !== expect) {
      if (segment.firstSeq > expect && last) {
        // Within the pruned records: a prune that was cut short.
        const hint = expect <= base
          ? ` (a prune of records 1 to ${base} was cut short: moat vault prune, or the server at its next start, removes the rest)`
          : "";
        return problem(
          "gap",
          `records ${expect} to ${segment.firstSeq - 1} are missing${hint}`,
          { seq: expect, file: last.path, offset: last.end },
        );
      }
      return problem(
        segment.firstSeq > expect ? "gap" : "sequence",
        segment.firstSeq > expect && base > 0
          ? `segment starts at record ${segment.firstSeq} where ${expect} is due (records 1 to ${base} were pruned)`
          : `segment starts at record ${segment.firstSeq} where ${expect} is due`,
        { seq: expect, file: segment.path, offset: 0 },
      );
    }
    const read = await readForCheck(segment.path);
    if ("error" in read) {
      // The vault never deletes a segment that held a record, except by a
      // recorded prune: one that vanished or cannot be read is damage.
      const bad = unreadableProblem(segment.path, read.error, "segment");
      return problem("unreadable", bad.message, {
        seq: expect,
        file: segment.path,
        offset: 0,
      });
    }
    const bytes = read.bytes;
    const scan = scanSegment(bytes, {
      magic: VAULT_MAGIC,
      kind: VAULT_KIND,
      firstSeq: segment.firstSeq,
    });
    let counted = 0;
    for (const record of scan.records) {
      const where = {
        seq: record.seq,
        file: segment.path,
        offset: record.offset,
      };
      if ((record.flags & ~(FLAG_CHAIN | FLAG_PARTIAL)) !== 0) {
        return problem(
          "checksum",
          `record flags ${record.flags} are unknown`,
          where,
        );
      }
      if (!(record.flags & FLAG_CHAIN)) {
        return problem("unchained", "the record carries no chain link", where);
      }
      if (record.bytes.length < VAULT_LINE_OFFSET + CHAIN_LINK_BYTES) {
        return problem("checksum", "the record is too short", where);
      }
      const { link, ok } = checkLink(record.bytes, prev);
      if (!ok) {
        return problem(
          "link",
          record.seq === base + 1 && base > 0
            ? `the chain link does not follow from the head of the prune of records 1 to ${base}`
            : "the chain link does not follow from the previous record",
          where,
        );
      }
      if (record.seq === base && start && !_equal(link, start.link)) {
        return problem(
          "prune",
          `the pruned records still on disk do not end in the head of the prune of records 1 to ${base}`,
          where,
        );
      }
      if (record.seq > sealedSeq && options.tail) {
        const view = new DataView(
          record.bytes.buffer,
          record.bytes.byteOffset,
          record.bytes.byteLength,
        );
        const why = _tailProblem(getU64(view, 28), options.tail);
        if (why !== undefined) {
          return problem("unsealed", `record ${record.seq}: ${why}`, where);
        }
      }
      options.tree?.add(record.seq, record.bytes);
      prev = link;
      expect = record.seq + 1;
      while (
        cp < checkpoints.length && checkpoints[cp]!.lastSeq === record.seq
      ) {
        const point = checkpoints[cp]!;
        if (!_equal(point.head, link)) {
          return problem(
            "seal-head",
            `records ${sealedFrom} to ${record.seq} do not match seal ${point.epoch}`,
            where,
            { epoch: point.epoch, range: [sealedFrom, record.seq] },
          );
        }
        cp++;
        if (checkpoints[cp]?.lastSeq !== record.seq) {
          sealedFrom = record.seq + 1;
        }
      }
      if (progress && ++counted % PROGRESS_RECORDS === 0) {
        progress.report({
          records: progress.records + counted,
          bytes: progress.bytes + record.offset,
          totalBytes: progress.totalBytes,
        });
      }
    }
    if (progress) {
      progress.records += scan.records.length;
      progress.bytes += bytes.length;
      progress.report({
        records: progress.records,
        bytes: progress.bytes,
        totalBytes: progress.totalBytes,
      });
    }
    if (scan.stop) {
      const stop = scan.stop;
      // Bad data at the end of the last segment, after every sealed record,
      // is what a write in progress or a torn write looks like: recovery
      // cuts it, readers stop there. It is reported, but not as damage.
      if (isLast && stop.offset > 0 && stop.seq > sealedSeq) {
        torn = {
          file: segment.path,
          offset: stop.offset,
          bytes: bytes.length - stop.offset,
          reason: stop.reason,
        };
      } else {
        return problem(stopKind(stop.kind), stop.reason, {
          seq: stop.seq,
          file: segment.path,
          offset: stop.offset,
        });
      }
    }
    last = { path: segment.path, end: scan.end };
  }
  if (cp < checkpoints.length) {
    const point = checkpoints.at(-1)!;
    return problem(
      "truncated",
      `records ${expect} to ${point.lastSeq} (sealed by seal ${point.epoch}) are missing`,
      {
        seq: expect,
        file: last?.path ?? dir,
        offset: last?.end ?? 0,
      },
      { epoch: point.epoch },
    );
  }
  return { ...done(), ...(torn && { torn }) };
}

/** Records between progress reports inside one segment. */
const PROGRESS_RECORDS = 8192;
