/**
 * The vault's witnesses (`moat serve --witness`): after each seal interval
 * the server hands the sources whose checkpoint it signed to a
 * {@linkcode WitnessFeeder}, which sends each one to every witness, checks
 * the cosignature that comes back against that witness's key, and keeps the
 * cosigned checkpoint in the vault.
 *
 * A witness that refuses a checkpoint (it holds a larger tree, or another
 * root: the vault was rolled back or forked) is logged loudly
 * (`cosign_refused`) and the server serves on; an unreachable witness is retried with backoff, from
 * 1 s doubling to 60 s, with the latest checkpoint of every source it has
 * not cosigned yet.
 *
 * @module
 */

import type { ClientOptions } from "../client.ts";
import type { AuditLog } from "../audit.ts";
import {
  addSignatures,
  parseVerifier,
  type Verifier,
  verifyCosignature,
} from "../checkpoint.ts";
import { Code, MoatError } from "../errors.ts";
import { WitnessConnection } from "./client.ts";

/** What the feeder needs of the vault. */
export interface CheckpointLog<K> {
  /** The vault's checkpoint verifier key (`name+id+base64`). */
  readonly checkpointVerifier: string;
  /**
   * The latest signed checkpoint of a source.
   *
   * @param key The source.
   * @returns The signed note and its tree size, or undefined if none.
   */
  checkpoint(
    key: K,
  ):
    | { note: string; size: number }
    | undefined
    | Promise<{ note: string; size: number } | undefined>;
  /**
   * A consistency proof between two sizes of a source's tree.
   *
   * @param key The source.
   * @param from The older size.
   * @param to The newer size.
   * @returns The proof's hashes.
   */
  consistencyProof(
    key: K,
    from: number,
    to: number,
  ): Uint8Array[] | Promise<Uint8Array[]>;
  /**
   * Keeps a cosigned checkpoint in the vault.
   *
   * @param key The source.
   * @param note The checkpoint with the witness's cosignature.
   */
  storeCosigned(key: K, note: string): Promise<void>;
}

/** One witness the vault sends its checkpoints to. */
export interface WitnessTarget {
  /** How to reach it: address, TLS, token, timeout. */
  client: ClientOptions;
  /** Its cosignature verifier key (`moat witness --init` prints it). */
  key: string;
}

/** Options for {@linkcode WitnessFeeder}. */
export interface WitnessFeederOptions<K> {
  /** The witnesses, each with its key. */
  witnesses: readonly WitnessTarget[];
  /** Where its events go (`cosigned`, `cosign_*` and `witness_*` lines). */
  audit: Pick<AuditLog, "write">;
  /**
   * A source as the audit log names it; also its identity here (two keys
   * with one label are one source).
   */
  label: (key: K) => string;
  /** First retry delay after a witness failed. @default {1000} */
  retryMinMs?: number;
  /** Longest retry delay. @default {60_000} */
  retryMaxMs?: number;
}

/** Conflict answers followed for one checkpoint before giving up for now. */
const MAX_CONFLICTS = 2;

/** One witness and what it still has to cosign. */
class Target<K> {
  readonly client: ClientOptions;
  readonly verifier: Verifier;
  readonly label: string;
  /** Sources whose latest checkpoint it has not cosigned yet, by label, in order. */
  readonly pending = new Map<string, K>();
  /** The size it was last seen to hold, per source label. */
  readonly holds = new Map<string, number>();
  running: Promise<void> | undefined;
  retry: ReturnType<typeof setTimeout> | undefined;
  /** Failed rounds in a row. */
  failures = 0;
  /** When the current outage began (ms), if it is out. */
  downSince: number | undefined;
  conn: WitnessConnection | undefined;

  constructor(t: WitnessTarget) {
    this.client = t.client;
    this.verifier = parseVerifier(t.key);
    const { hostname, port } = t.client.server;
    this.label = hostname.includes(":")
      ? `[${hostname}]:${port}`
      : `${hostname}:${port}`;
  }
}

/**
 * Sends the vault's new checkpoints to its witnesses and keeps what they
 * cosign (see the module doc).
 *
 * @example
 * ```ts ignore
 * const feeder = new WitnessFeeder(vault, {
 *   witnesses: [{ client, key: "witness.example+1a2b3c4d+BA…" }],
 *   audit, label: (key) => sourceLabel(key),
 * });
 * feeder.submit(grownSources); // after each seal
 * await feeder.close();
 * ```
 */
export class WitnessFeeder<K> {
  #log: CheckpointLog<K>;
  #targets: Target<K>[];
  #audit: Pick<AuditLog, "write">;
  #label: (key: K) => string;
  #retryMinMs: number;
  #retryMaxMs: number;
  #closed = false;
  /** Aborted by close: connection attempts in progress end at once. */
  #closing = new AbortController();

  /**
   * @param log The vault.
   * @param options The witnesses, the audit log, how sources are named,
   * retry delays.
   * @throws {MoatError} `ERR_CHECKPOINT` for a witness key that does not
   * parse.
   */
  constructor(log: CheckpointLog<K>, options: WitnessFeederOptions<K>) {
    this.#log = log;
    this.#targets = options.witnesses.map((w) => new Target<K>(w));
    this.#audit = options.audit;
    this.#label = options.label;
    this.#retryMinMs = options.retryMinMs ?? 1000;
    this.#retryMaxMs = options.retryMaxMs ?? 60_000;
  }

  /**
   * Sends the latest checkpoint of each source to every witness (in the
   * background; a witness that is down gets it when it is back).
   *
   * @param keys Sources with a new checkpoint.
   */
  submit(keys: Iterable<K>): void {
    if (this.#closed) return;
    const list = [...keys];
    if (list.length === 0) return;
    for (const t of this.#targets) {
      for (const k of list) t.pending.set(this.#label(k), k);
      // A witness waiting for its retry gets the new ones then.
      if (t.retry === undefined) this.#start(t);
    }
  }

  /**
   * Resolves once no witness has a round running (for tests and shutdown).
   *
   * @returns When idle.
   */
  async idle(): Promise<void> {
    while (this.#targets.some((t) => t.running !== undefined)) {
      await Promise.allSettled(this.#targets.map((t) => t.running));
    }
  }

  /**
   * Sends these sources' latest checkpoints to every witness once more, at
   * once (a witness waiting for its retry is tried now), waits at most
   * `graceMs` for the answers, then {@linkcode WitnessFeeder.prototype.close}s.
   * A server stopping calls it after its last record is durable, so that
   * the vault's final checkpoints are cosigned too.
   *
   * @param keys The sources.
   * @param graceMs Longest wait.
   * @returns When closed.
   */
  async finish(keys: Iterable<K>, graceMs: number): Promise<void> {
    if (!this.#closed) {
      for (const t of this.#targets) {
        clearTimeout(t.retry);
        t.retry = undefined;
      }
      this.submit(keys);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.idle(),
        new Promise<void>((resolve) => timer = setTimeout(resolve, graceMs)),
      ]);
      clearTimeout(timer);
    }
    await this.close();
  }

  /**
   * Stops: cancels retries, ends connections and connection attempts, and
   * waits for rounds in progress to end. Call it before closing the vault:
   * nothing is asked of the vault after it resolves.
   *
   * @returns When stopped.
   */
  async close(): Promise<void> {
    this.#closed = true;
    this.#closing.abort();
    for (const t of this.#targets) {
      clearTimeout(t.retry);
      t.retry = undefined;
      t.conn?.close();
    }
    await this.idle();
  }

  #start(t: Target<K>): void {
    if (t.running !== undefined || this.#closed || t.pending.size === 0) {
      return;
    }
    t.running = this.#round(t).finally(() => {
      t.running = undefined;
      // Checkpoints that came in meanwhile go now (not after a failure:
      // the retry timer has them).
      if (t.retry === undefined) this.#start(t);
    });
  }

  /** One connection to a witness: every pending source, in turn. */
  async #round(t: Target<K>): Promise<void> {
    let cosigned = 0;
    try {
      while (t.pending.size > 0 && !this.#closed) {
        if (t.conn === undefined || t.conn.closed) {
          t.conn = await WitnessConnection.open(
            t.client,
            this.#closing.signal,
          );
        }
        const [label, key] = t.pending.entries().next().value as [string, K];
        if (await this.#send(t, t.conn, key)) cosigned++;
        t.pending.delete(label);
        // Back once it answered, not merely accepted a connection.
        if (t.downSince !== undefined) {
          this.#audit.write("witness_reachable", {
            witness: t.label,
            downMs: Date.now() - t.downSince,
          });
          t.downSince = undefined;
        }
        t.failures = 0;
      }
    } catch (err) {
      t.conn?.close();
      t.conn = undefined;
      if (this.#closed) return;
      t.failures++;
      const delay = Math.min(
        this.#retryMaxMs,
        this.#retryMinMs * 2 ** Math.min(t.failures - 1, 30),
      );
      if (t.downSince === undefined) {
        t.downSince = Date.now();
        this.#audit.write("witness_unreachable", {
          witness: t.label,
          code: (err as { code?: unknown }).code ?? Code.ERR_INTERNAL,
          message: (err as Error).message,
          pending: t.pending.size,
        });
      }
      t.retry = setTimeout(() => {
        t.retry = undefined;
        this.#start(t);
      }, delay);
      (t.retry as { unref?: () => void }).unref?.();
    } finally {
      if (cosigned > 0) {
        this.#audit.write("cosigned", {
          witness: t.label,
          checkpoints: cosigned,
        });
      }
    }
    t.conn?.close();
    t.conn = undefined;
  }

  /**
   * Sends one source's latest checkpoint, following the witness's size
   * when it holds another than believed.
   *
   * @returns Whether it was cosigned (false: refused, or nothing to send).
   * @throws What the connection throws, but for a refusal (logged).
   */
  async #send(t: Target<K>, conn: WitnessConnection, key: K) {
    const label = this.#label(key);
    const cp = await this.#log.checkpoint(key);
    if (cp === undefined) return false;
    let old = t.holds.get(label) ?? 0;
    for (let conflicts = 0; conflicts <= MAX_CONFLICTS; conflicts++) {
      // A witness that holds more than the vault has is sent no proof: it
      // refuses the smaller tree, and says so in both audit logs.
      const proof = old > 0 && old < cp.size
        ? await this.#log.consistencyProof(key, old, cp.size)
        : [];
      let answer;
      try {
        answer = await conn.request({
          key: this.#log.checkpointVerifier,
          old,
          proof,
          checkpoint: cp.note,
        });
      } catch (err) {
        if (
          err instanceof MoatError &&
          (err.code === Code.ERR_WITNESS_REFUSED ||
            err.code === Code.ERR_TOO_MANY_ORIGINS)
        ) {
          this.#audit.write("cosign_refused", {
            witness: t.label,
            source: label,
            size: cp.size,
            code: err.code,
            message: err.message,
          });
          return false;
        }
        throw err;
      }
      if (answer.kind === "conflict") {
        old = answer.size;
        t.holds.set(label, old);
        continue;
      }
      const note = addSignatures(cp.note, answer.cosignature);
      try {
        verifyCosignature(note, t.verifier);
      } catch (err) {
        this.#audit.write("cosign_invalid", {
          witness: t.label,
          source: label,
          size: cp.size,
          message: (err as Error).message,
        });
        return false;
      }
      t.holds.set(label, cp.size);
      try {
        await this.#log.storeCosigned(key, note);
      } catch (err) {
        // The vault's own failure (its disk), not the witness's: the next
        // checkpoint is cosigned and stored again.
        this.#audit.write("error", {
          witness: t.label,
          source: label,
          code: (err as { code?: unknown }).code ?? Code.ERR_INTERNAL,
          message: (err as Error).message,
          during: "witness",
        });
        return false;
      }
      return true;
    }
    return false;
  }
}
