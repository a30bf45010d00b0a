/**
 * What `moat vault verify --witness-key` asks of one source's checkpoint
 * log: every witness cosignature in it verifies, and the latest checkpoint,
 * once older than a grace period, is cosigned by every witness named. Pure:
 * the caller reads the log and checks that the cosigned checkpoints it gets
 * back agree with the source's records (as for any checkpoint held outside
 * the vault).
 *
 * What this catches: records changed after a witness cosigned a checkpoint
 * over them (their tree no longer gives the cosigned root), and a vault that
 * stopped being witnessed (its latest checkpoint is not cosigned). A vault
 * put back whole from an older copy carries its older checkpoint log with
 * it: the witness's own state (`moat witness` refuses its next checkpoint,
 * and the checkpoint it holds can be given to `vault verify --checkpoint`)
 * catches that.
 *
 * @module
 */

import {
  openCheckpoint,
  splitNote,
  type Verifier,
  verifyCosignature,
} from "../checkpoint.ts";

/** One entry of a source's checkpoint log. */
export interface LoggedNote {
  /** The note as kept: the vault's signature, maybe cosignatures. */
  note: string;
  /** When it was logged, ms since the epoch. */
  time: number;
}

/** Options for {@linkcode checkWitnessed}. */
export interface CheckWitnessedOptions {
  /** The vault's checkpoint key. */
  vault: Verifier;
  /** The witnesses whose cosignatures are required. */
  witnesses: readonly Verifier[];
  /** Now, ms since the epoch. */
  now: number;
  /**
   * How long a checkpoint may wait for its cosignatures: more than the
   * server's `--seal-interval`, with room for a witness's retries.
   */
  graceMs: number;
}

/** A checkpoint a witness cosigned, to check against the source's records. */
export interface CosignedCheckpoint {
  /** The witness's key name. */
  witness: string;
  size: number;
  root: Uint8Array;
  /** When the vault logged it, ms since the epoch. */
  time: number;
  /** The note, with its signatures. */
  note: string;
}

/** What {@linkcode checkWitnessed} found. */
export interface WitnessedReport {
  /** Every checkpoint a required witness cosigned, oldest first. */
  cosigned: CosignedCheckpoint[];
  /** Per witness key name: the largest size it cosigned (0 if none). */
  witnessed: Record<string, number>;
  /** The latest checkpoint logged (largest size), if any. */
  latest: { size: number; time: number } | undefined;
  /** Each a one-line reason to fail: a bad cosignature, a missing one. */
  problems: string[];
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString("hex");
}

/**
 * Checks one source's checkpoint log against the witnesses required.
 *
 * @example A checkpoint cosigned in time passes
 * ```ts ignore
 * const report = checkWitnessed(await readLog(dir), {
 *   vault, witnesses: [w], now: Date.now(), graceMs: 600_000,
 * });
 * if (report.problems.length > 0) fail(report.problems);
 * for (const c of report.cosigned) checkAgainstTree(c.size, c.root);
 * ```
 *
 * @param entries The log, oldest first.
 * @param options The keys, now and the grace.
 * @returns The cosigned checkpoints and the problems found.
 */
export function checkWitnessed(
  entries: readonly LoggedNote[],
  options: CheckWitnessedOptions,
): WitnessedReport {
  const problems: string[] = [];
  const cosigned: CosignedCheckpoint[] = [];
  const witnessed: Record<string, number> = {};
  for (const w of options.witnesses) witnessed[w.name] = 0;
  let latest: { size: number; time: number } | undefined;
  for (const entry of entries) {
    let cp;
    try {
      cp = openCheckpoint(entry.note, options.vault);
    } catch (err) {
      problems.push(
        `checkpoint logged at ${new Date(entry.time).toISOString()}: ${
          (err as Error).message
        }`,
      );
      continue;
    }
    if (latest === undefined || cp.size >= latest.size) {
      latest = { size: cp.size, time: entry.time };
    }
    const { signatures } = splitNote(entry.note);
    for (const w of options.witnesses) {
      const line = signatures.find((s) =>
        s.name === w.name && hex(s.id) === hex(w.id)
      );
      if (line === undefined) continue;
      try {
        verifyCosignature(entry.note, w);
      } catch (err) {
        // A cosignature that does not verify is forged or damaged: fail
        // closed rather than skip it.
        problems.push(
          `checkpoint of size ${cp.size}: ${(err as Error).message}`,
        );
        continue;
      }
      cosigned.push({
        witness: w.name,
        size: cp.size,
        root: cp.root,
        time: entry.time,
        note: entry.note,
      });
      witnessed[w.name] = Math.max(witnessed[w.name]!, cp.size);
    }
  }
  if (latest !== undefined && options.now - latest.time > options.graceMs) {
    for (const w of options.witnesses) {
      const upTo = witnessed[w.name]!;
      if (upTo >= latest.size) continue;
      problems.push(
        `the latest checkpoint (size ${latest.size}, logged ${
          new Date(latest.time).toISOString()
        }) is not cosigned by witness ${w.name}, which cosigned ${
          upTo === 0 ? "none" : `up to size ${upTo}`
        }`,
      );
    }
  }
  return { cosigned, witnessed, latest, problems };
}
