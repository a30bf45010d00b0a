/**
 * `moat ship`: follow log files (or read stdin) into the spool, and stream the
 * spool to a moat vault, trimming only what the server acknowledged as durable.
 *
 * @module
 */

import { type ClientOptions, openSession, serverText } from "../client.ts";
import { encodeFrame } from "../framer.ts";
import {
  Code,
  ConnectionClosedError,
  errorFromFrame,
  MoatError,
  ProtocolError,
} from "../errors.ts";
import {
  decodeError,
  decodeShipReady,
  encodeShipBatch,
  Kind,
  SHIP_RECORD_HEADER,
  type ShipReady,
  type ShipRecord,
} from "../protocol.ts";
import { DEFAULT_MAX_BATCH_RECORDS } from "../limits.ts";
import type { ShipBacklog } from "./backlog.ts";
import {
  type FilePosition,
  follow,
  type FollowedLine,
  type FollowEvent,
  readLines,
} from "./follow.ts";
import { openSpool, type Spool, type SpoolEvent } from "./spool.ts";
import { Heartbeat, heartbeatInterval } from "../heartbeat.ts";

/** Longest line shipped whole; longer lines go as flagged pieces. Fits one frame. */
export const SHIP_MAX_LINE = 256 * 1024;
/** Encoded bytes per ShipBatch frame, well under the default 1 MiB frame limit. */
const FRAME_BUDGET = 512 * 1024;
/**
 * Bytes a spool record takes before its line (record header, timestamp,
 * input and position: docs/VAULT.md "Spool line record"), which count
 * against --spool-size. tests/ship_shipper_test.ts checks it against a spool.
 */
export const SPOOL_RECORD_OVERHEAD = 56;

/** What the shipper reports, for `main.ts` to print. */
export type ShipperEvent =
  | {
    type: "connected";
    server: string;
    peer: string;
    source: string;
    lastSeq: number;
  }
  | {
    type: "disconnected";
    message: string;
    retryMs: number;
    /** Whether the server had answered (ShipReady) before the failure. */
    connected: boolean;
  }
  | { type: "follow"; event: FollowEvent }
  | {
    /**
     * Reading is paused: the spool stayed full after trimming everything
     * acknowledged. `usedBytes` (on disk) plus `waitingBytes` (the lines
     * read and waiting, with their record headers) exceed `maxBytes`.
     */
    type: "full";
    usedBytes: number;
    maxBytes: number;
    waitingLines: number;
    waitingBytes: number;
  }
  | {
    /** Acknowledgements made room after a reported `full`; reading resumed. */
    type: "resumed";
  }
  | {
    /** Other spool news: repairs at open, a failed checkpoint. */
    type: "spool";
    event: Exclude<SpoolEvent, { type: "full" | "resumed" }>;
  }
  | { type: "done"; lastSeq: number };

/** Options for {@linkcode ship}. */
export interface ShipOptions {
  client: ClientOptions;
  /**
   * Files to follow; or ["-"] for stdin; or [] to send only what the spool
   * holds. With ["-"] or [], shipping ends once everything is acknowledged.
   */
  inputs: readonly string[];
  /**
   * Where to start reading an input whose state has no position yet, by
   * path (taken over from a state that shipped it before).
   */
  resume?: ReadonlyMap<string, FilePosition>;
  /** Kept up to date with the spooled, unacknowledged lines. */
  backlog?: ShipBacklog;
  /** Bytes of stdin, when inputs is ["-"]. */
  stdin?: AsyncIterable<Uint8Array>;
  /** State file; the spool lives beside it. */
  statePath: string;
  /** Source name sent to the server. */
  source: string;
  /** Bound on the on-disk spool. @default {268435456} */
  spoolBytes?: number;
  /** Stops following and shipping (SIGINT/SIGTERM). */
  signal: AbortSignal;
  onEvent: (event: ShipperEvent) => void;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * Errors that no reconnect can fix. Not ERR_SEQ_GAP: the shipper always
 * resends from the server's lastSeq, so a gap can only follow a server-side
 * rollback (a failed commit); a reconnect resends from the durable position.
 */
const FATAL: ReadonlySet<Code> = new Set([
  Code.ERR_STATE_LOST,
  Code.ERR_VAULT_LOST,
  Code.ERR_NO_VAULT,
  Code.ERR_ACCESS_DENIED,
  Code.ERR_AUTH,
  Code.ERR_CERT_REQUIRED,
  Code.ERR_CERT_REJECTED,
  Code.ERR_PROTOCOL,
  // The vault refuses this source (its name, or one source too many) or
  // this shipper's batches: resending cannot change that.
  Code.ERR_SOURCE_NAME,
  Code.ERR_TOO_MANY_SOURCES,
  Code.ERR_TOO_MANY_RECORDS,
]);

function isFatal(err: unknown): boolean {
  return err instanceof MoatError && FATAL.has(err.code);
}

/** A ShipReady with its server-supplied text made safe to show. */
function safeReady(ready: ShipReady): ShipReady {
  return {
    peer: serverText(ready.peer),
    source: serverText(ready.source),
    lastSeq: ready.lastSeq,
  };
}

/**
 * Splits spool records into frame-sized groups of at most as many records
 * as the server takes in one batch.
 */
function* frames(records: readonly ShipRecord[]): Generator<ShipRecord[]> {
  let group: ShipRecord[] = [];
  let size = 0;
  for (const r of records) {
    const n = SHIP_RECORD_HEADER + r.line.length;
    if (
      (size + n > FRAME_BUDGET || group.length >= DEFAULT_MAX_BATCH_RECORDS) &&
      group.length > 0
    ) {
      yield group;
      group = [];
      size = 0;
    }
    group.push(r);
    size += n;
  }
  if (group.length > 0) yield group;
}

/**
 * Ships until the signal fires, or, for stdin (and for no inputs), until
 * every line read was acknowledged. Reconnects with backoff; unacknowledged
 * records stay in the spool and are resent.
 *
 * @param options Inputs, server, state, source, signal, event sink.
 * @returns The last acknowledged sequence number.
 * @throws {MoatError} `ERR_STATE_LOST` / `ERR_VAULT_LOST` when the server's
 * count and the shipper's state disagree in a way that would lose or
 * silently drop lines; `ERR_NO_VAULT`, access refusals.
 */
export async function ship(options: ShipOptions): Promise<number> {
  const { signal, backlog } = options;
  let connected = false;
  const onEvent = (event: ShipperEvent) => {
    if (event.type === "connected") connected = true;
    options.onEvent(event);
  };
  const pressure = new _SpoolPressure(onEvent);
  const spool = await openSpool(options.statePath, {
    source: options.source,
    maxLineBytes: SHIP_MAX_LINE,
    ...(options.spoolBytes !== undefined && { maxBytes: options.spoolBytes }),
    onEvent: (event) => pressure.event(event),
  });
  pressure.spool = spool;
  if (backlog !== undefined) {
    // Lines spooled by an earlier run and not yet acknowledged.
    backlog.reset(spool.ackedSeq);
    try {
      for await (const batch of spool.records(spool.ackedSeq + 1)) {
        backlog.add(batch[0]!.seq, batch.map((r) => r.line.length));
      }
    } catch (error) {
      await spool.close();
      throw error;
    }
  }
  const stdinMode = options.inputs.every((path) => path === "-");
  let inputDone = options.inputs.length === 0;
  let wake = () => {};
  const readers = options.inputs.map(async (path) => {
    const input = await spool.input(path);
    const start = input.position ?? options.resume?.get(input.path);
    const batches = path === "-"
      ? readLines(options.stdin ?? [], { maxLineBytes: SHIP_MAX_LINE })
      : follow(path, {
        signal,
        maxLineBytes: SHIP_MAX_LINE,
        ...(start && { start }),
        onEvent: (event) => onEvent({ type: "follow", event }),
      });
    for await (const batch of batches) {
      if (batch.length > 0) {
        pressure.appending = batch;
        const appended = spool.append(input.id, batch);
        pressure.appending = undefined;
        const last = await appended;
        backlog?.add(
          last - batch.length + 1,
          batch.map((l) => l.line.length),
        );
      }
      if (signal.aborted) break;
    }
  });
  const reading = Promise.all(readers).then(() => {
    inputDone = true;
    wake();
  });
  let readError: unknown;
  reading.catch((err) => {
    readError = err;
    wake();
  });

  try {
    let backoff = 200;
    while (!signal.aborted) {
      if (readError !== undefined) throw readError;
      if (stdinMode && inputDone && spool.ackedSeq >= spool.lastSeq) break;
      connected = false;
      try {
        await session(
          { ...options, onEvent },
          spool,
          () => inputDone && stdinMode,
          (w) => (wake = w),
        );
        backoff = 200;
      } catch (err) {
        if (isFatal(err) || readError !== undefined) throw readError ?? err;
        if (signal.aborted) break;
        onEvent({
          type: "disconnected",
          message: (err as Error).message,
          retryMs: backoff,
          connected,
        });
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, 10_000);
      }
    }
    onEvent({ type: "done", lastSeq: spool.ackedSeq });
    return spool.ackedSeq;
  } finally {
    // Closing admits the appends that waited for room (they fail): that is
    // not room, so it is not reported as such.
    pressure.closing = true;
    await spool.close();
  }
}

/**
 * Reports spool pressure as the user sees it: `full` only when the spool is
 * still full after trimming what was acknowledged (a trim that makes room
 * at once is not news), with the size of what waits; `resumed` only after a
 * reported `full`, and not when closing.
 */
class _SpoolPressure {
  spool: Spool | undefined;
  /** The lines being handed to `append` (the `full` event fires inside it). */
  appending: readonly FollowedLine[] | undefined;
  closing = false;
  #reported = false;
  #onEvent: (event: ShipperEvent) => void;

  constructor(onEvent: (event: ShipperEvent) => void) {
    this.#onEvent = onEvent;
  }

  event(event: SpoolEvent): void {
    if (event.type === "full") {
      const spool = this.spool;
      const lines = this.appending ?? [];
      let waitingBytes = 0;
      for (const l of lines) {
        waitingBytes += SPOOL_RECORD_OVERHEAD + l.line.length;
      }
      if (spool === undefined) return;
      // The spool trims at once when full; what is left after that counts.
      spool.checkpoint().catch(() => {}).then(() => {
        if (!spool.full || this.closing || this.#reported) return;
        this.#reported = true;
        this.#onEvent({
          type: "full",
          usedBytes: spool.usedBytes,
          maxBytes: event.maxBytes,
          waitingLines: lines.length,
          waitingBytes,
        });
      });
    } else if (event.type === "resumed") {
      if (!this.#reported || this.closing) return;
      this.#reported = false;
      this.#onEvent({ type: "resumed" });
    } else {
      this.#onEvent({ type: "spool", event });
    }
  }
}

/** One connection: handshake, resend from the server's position, stream, collect acks. */
async function session(
  options: ShipOptions,
  spool: Spool,
  finished: () => boolean,
  setWake: (wake: () => void) => void,
): Promise<void> {
  const { conn, reader, welcome } = await openSession(options.client, "ship", {
    source: options.source,
  }, options.signal);
  // A shipper of a quiet log pings, so the server neither drops it as idle
  // nor reports its source silent.
  const heartbeat = new Heartbeat(conn, heartbeatInterval(welcome));
  const stop = new AbortController();
  // Closing at once ends a write the server is not reading and an ack that
  // will not come; whatever is unacknowledged stays in the spool.
  const onAbort = () => {
    stop.abort();
    conn.close();
  };
  options.signal.addEventListener("abort", onAbort, { once: true });
  if (options.signal.aborted) onAbort();
  try {
    const first = await reader.readFrame();
    if (first === null) {
      throw new ConnectionClosedError(
        "Connection closed by server before it was ready",
      );
    }
    if (first.type === Kind.Error) {
      throw errorFromFrame(decodeError(first.payload));
    }
    if (first.type !== Kind.ShipReady) {
      throw new ProtocolError(
        `Expected ship ready, got frame type 0x${first.type.toString(16)}`,
      );
    }
    const ready = safeReady(decodeShipReady(first.payload));
    if (ready.lastSeq > spool.lastSeq) {
      throw new MoatError(
        Code.ERR_STATE_LOST,
        `Server already holds ${ready.lastSeq} records of source "${ready.source}" from ${ready.peer}, ` +
          `but this shipper's state (${spool.stateFile}) only reached ${spool.lastSeq}: the state was lost or ` +
          `another shipper uses the same --source; use another --source or restore the state file`,
      );
    }
    if (ready.lastSeq < spool.ackedSeq) {
      throw new MoatError(
        Code.ERR_VAULT_LOST,
        `Server holds only ${ready.lastSeq} records of source "${ready.source}" but acknowledged ` +
          `${spool.ackedSeq} before: the vault lost acknowledged records`,
      );
    }
    if (ready.lastSeq > spool.ackedSeq) {
      spool.ack(ready.lastSeq);
      options.backlog?.ack(ready.lastSeq);
    }
    options.onEvent({
      type: "connected",
      server: `${options.client.server.hostname}:${options.client.server.port}`,
      peer: ready.peer,
      source: ready.source,
      lastSeq: ready.lastSeq,
    });

    let sent = ready.lastSeq;
    let allAcked: () => void = () => {};
    const acked = new Promise<void>((resolve) => (allAcked = resolve));
    const checkDone = () => {
      if (finished() && sent >= spool.lastSeq) {
        stop.abort();
        if (spool.ackedSeq >= sent) allAcked();
      }
    };
    setWake(checkDone);
    const acking = (async () => {
      for (;;) {
        const frame = await reader.readFrame();
        if (frame === null) {
          throw new ConnectionClosedError("Connection closed by server");
        }
        if (frame.type === Kind.Pong) continue;
        if (frame.type === Kind.Error) {
          throw errorFromFrame(decodeError(frame.payload));
        }
        if (frame.type !== Kind.ShipAck || frame.payload.length !== 8) {
          throw new ProtocolError(
            `Unexpected frame type 0x${frame.type.toString(16)} while shipping`,
          );
        }
        const seq = new DataView(
          frame.payload.buffer,
          frame.payload.byteOffset,
          8,
        ).getFloat64(0, true);
        if (seq > spool.ackedSeq && seq <= sent) {
          spool.ack(seq);
          options.backlog?.ack(seq);
        }
        checkDone();
      }
    })();
    acking.catch(() => stop.abort());

    checkDone();
    for await (
      const batch of spool.records(ready.lastSeq + 1, {
        follow: true,
        signal: stop.signal,
      })
    ) {
      for (const group of frames(batch)) {
        await heartbeat.write(
          encodeFrame({
            type: Kind.ShipBatch,
            payload: encodeShipBatch(group),
          }),
        );
        sent = group[group.length - 1]!.seq;
      }
      checkDone();
    }
    if (!finished()) {
      // Stopped by the signal (or the ack loop failed): surface a failure.
      await Promise.race([acking, Promise.resolve()]);
      return;
    }
    await Promise.race([acked, acking]);
    await heartbeat.stop();
    await conn.closeWrite().catch(() => {});
  } finally {
    void heartbeat.stop();
    options.signal.removeEventListener("abort", onAbort);
    setWake(() => {});
    conn.close();
  }
}
