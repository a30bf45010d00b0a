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
import { follow, type FollowEvent, readLines } from "./follow.ts";
import { openSpool, type Spool, type SpoolEvent } from "./spool.ts";

/** Longest line shipped whole; longer lines go as flagged pieces. Fits one frame. */
export const SHIP_MAX_LINE = 256 * 1024;
/** Encoded bytes per ShipBatch frame, well under the default 1 MiB frame limit. */
const FRAME_BUDGET = 512 * 1024;

/** What the shipper reports, for `main.ts` to print. */
export type ShipperEvent =
  | {
    type: "connected";
    server: string;
    peer: string;
    source: string;
    lastSeq: number;
  }
  | { type: "disconnected"; message: string; retryMs: number }
  | { type: "follow"; event: FollowEvent }
  | { type: "spool"; event: SpoolEvent }
  | { type: "done"; lastSeq: number };

/** Options for {@linkcode ship}. */
export interface ShipOptions {
  client: ClientOptions;
  /** Files to follow, or ["-"] for stdin. */
  inputs: readonly string[];
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
 * Ships until the signal fires, or, for stdin, until every line read was
 * acknowledged. Reconnects with backoff; unacknowledged records stay in the
 * spool and are resent.
 *
 * @param options Inputs, server, state, source, signal, event sink.
 * @returns The last acknowledged sequence number.
 * @throws {MoatError} `ERR_STATE_LOST` / `ERR_VAULT_LOST` when the server's
 * count and the shipper's state disagree in a way that would lose or
 * silently drop lines; `ERR_NO_VAULT`, access refusals.
 */
export async function ship(options: ShipOptions): Promise<number> {
  const { signal } = options;
  const spool = await openSpool(options.statePath, {
    source: options.source,
    maxLineBytes: SHIP_MAX_LINE,
    ...(options.spoolBytes !== undefined && { maxBytes: options.spoolBytes }),
    onEvent: (event) => options.onEvent({ type: "spool", event }),
  });
  const stdinMode = options.inputs.length === 1 && options.inputs[0] === "-";
  let inputDone = false;
  let wake = () => {};
  const readers = options.inputs.map(async (path) => {
    const input = await spool.input(path);
    const batches = path === "-"
      ? readLines(options.stdin ?? [], { maxLineBytes: SHIP_MAX_LINE })
      : follow(path, {
        signal,
        maxLineBytes: SHIP_MAX_LINE,
        ...(input.position && { start: input.position }),
        onEvent: (event) => options.onEvent({ type: "follow", event }),
      });
    for await (const batch of batches) {
      if (batch.length > 0) await spool.append(input.id, batch);
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
      try {
        await session(
          options,
          spool,
          () => inputDone && stdinMode,
          (w) => (wake = w),
        );
        backoff = 200;
      } catch (err) {
        if (isFatal(err) || readError !== undefined) throw readError ?? err;
        if (signal.aborted) break;
        options.onEvent({
          type: "disconnected",
          message: (err as Error).message,
          retryMs: backoff,
        });
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, 10_000);
      }
    }
    options.onEvent({ type: "done", lastSeq: spool.ackedSeq });
    return spool.ackedSeq;
  } finally {
    await spool.close();
  }
}

/** One connection: handshake, resend from the server's position, stream, collect acks. */
async function session(
  options: ShipOptions,
  spool: Spool,
  finished: () => boolean,
  setWake: (wake: () => void) => void,
): Promise<void> {
  const { conn, reader } = await openSession(options.client, "ship", {
    source: options.source,
  }, options.signal);
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
    if (ready.lastSeq > spool.ackedSeq) spool.ack(ready.lastSeq);
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
        if (seq > spool.ackedSeq && seq <= sent) spool.ack(seq);
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
        await conn.write(
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
    await conn.closeWrite().catch(() => {});
  } finally {
    options.signal.removeEventListener("abort", onAbort);
    setWake(() => {});
    conn.close();
  }
}
