/**
 * `moat ship`: follow log files (or read stdin) into the spool, and stream the
 * spool to a moat vault, trimming only what the server acknowledged as durable.
 *
 * @module
 */

import {
  type ClientOptions,
  openSession,
  type ServerAddr,
  serverText,
} from "../client.ts";
import { DEFAULT_MAX_FRAME_SIZE, encodeFrame, HEADER_SIZE } from "../framer.ts";
import {
  Code,
  ConnectionClosedError,
  errorFromFrame,
  MoatError,
  ProtocolError,
} from "../errors.ts";
import {
  decodeError,
  decodeShipBatch,
  decodeShipProof,
  decodeShipReady,
  decodeShipReceipt,
  encodeShipProve,
  Kind,
  type ShipReady,
} from "../protocol.ts";
import { DEFAULT_MAX_BATCH_RECORDS } from "../limits.ts";
import type { ShipBacklog } from "./backlog.ts";
import {
  type FilePosition,
  follow,
  type FollowEvent,
  readLines,
} from "./follow.ts";
import { openSpool, type Spool } from "./spool.ts";
import { shipFrames } from "./frames.ts";
import { Heartbeat, heartbeatInterval } from "../heartbeat.ts";
import { checkAudit, type PendingAudit, SpotCheck } from "./spot_check.ts";
import { Witness } from "./witness.ts";
import { SpoolPressure, type SpoolPressureEvent } from "./pressure.ts";
import { DoorRotation, doorText, isFatal } from "./doors.ts";

/** Longest line shipped whole; longer lines go as flagged pieces. Fits one frame. */
export const SHIP_MAX_LINE = 256 * 1024;
/** Encoded bytes per ShipBatch frame, well under the default 1 MiB frame limit. */
const FRAME_BUDGET = 512 * 1024;
export { SPOOL_RECORD_OVERHEAD } from "./pressure.ts";

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
    /** The door that failed, `host:port`. */
    server?: string;
    /** With several doors: the one tried next. */
    next?: string;
  }
  | { type: "follow"; event: FollowEvent }
  | SpoolPressureEvent
  | {
    /**
     * The vault's checkpoint key was pinned at first contact (no
     * `vaultKey` given): later checkpoints must be signed by it.
     */
    type: "pinned";
    key: string;
  }
  | {
    /** A checkpoint accepted: it extends the one held before. */
    type: "receipt";
    size: number;
    /** The highest sequence number it covers. */
    covered: number;
  }
  | {
    /** An audited record was proven in the vault, unaltered. */
    type: "audited";
    seq: number;
  }
  | { type: "done"; lastSeq: number };

/** Options for {@linkcode ship}. */
export interface ShipOptions {
  /** How to connect; its `server` is the only door unless `doors` is given. */
  client: ClientOptions;
  /**
   * The front doors of one vault (`--server a,b,c`), tried in order: a
   * failure moves to the next (lib/ship/doors.ts says which failures).
   * @default {[client.server]}
   */
  doors?: readonly ServerAddr[];
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
  /**
   * The vault's checkpoint verifier key (`--vault-key`): checkpoints must be
   * signed by it. Without it the key is pinned at first contact.
   */
  vaultKey?: string | undefined;
  /**
   * Records a minute to audit (`--audit-every`): each gets an inclusion
   * proof from the vault, checked against the checkpoint held. A vault
   * that signs no checkpoints is then refused. @default {0}
   */
  auditEvery?: number | undefined;
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

/** A ShipReady with its server-supplied text made safe to show. */
function safeReady(ready: ShipReady): ShipReady {
  return {
    peer: serverText(ready.peer),
    source: serverText(ready.source),
    lastSeq: ready.lastSeq,
  };
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
  const pressure = new SpoolPressure(onEvent);
  let wake = () => {};
  const spool = await openSpool(options.statePath, {
    source: options.source,
    maxLineBytes: SHIP_MAX_LINE,
    ...(options.spoolBytes !== undefined && { maxBytes: options.spoolBytes }),
    onEvent: (event) => {
      pressure.event(event);
      // A full spool may wait for a receipt (the session asks for one).
      if (event.type === "full") wake();
    },
  });
  pressure.spool = spool;
  let witness: Witness;
  try {
    witness = new Witness({
      store: {
        vaultKey: spool.vaultKey,
        checkpoint: spool.vaultCheckpoint,
        keep: (key, note) => spool.keepReceipt(key, note),
      },
      vaultKey: options.vaultKey,
      stateFile: spool.stateFile,
    });
  } catch (error) {
    await spool.close();
    throw error;
  }
  const spot = options.auditEvery
    ? new SpotCheck({
      maxLine: (options.client.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE) - 4096,
    })
    : undefined;
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
    // The backlog's line lengths, without an array per batch.
    let lengths = new Uint32Array(0);
    for await (const batch of batches) {
      if (batch.length > 0) {
        pressure.appending = batch;
        const appended = spool.append(input.id, batch);
        pressure.appending = undefined;
        const last = await appended;
        if (backlog !== undefined) {
          if (lengths.length < batch.length) {
            lengths = new Uint32Array(batch.length * 2);
          }
          for (let i = 0; i < batch.length; i++) {
            lengths[i] = batch[i]!.line.length;
          }
          backlog.add(
            last - batch.length + 1,
            lengths.subarray(0, batch.length),
          );
        }
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

  const doors = new DoorRotation(options.doors ?? [options.client.server]);
  try {
    while (!signal.aborted) {
      if (readError !== undefined) throw readError;
      if (stdinMode && inputDone && spool.ackedSeq >= spool.lastSeq) break;
      connected = false;
      try {
        await session({ ...options, onEvent }, {
          spool,
          witness,
          spot,
          door: doors.current,
          ready: () => doors.connected(),
          progressed: () => doors.progressed(),
          finished: () => inputDone && stdinMode,
          setWake: (w) => (wake = w),
        });
        doors.succeeded();
      } catch (err) {
        // Fatal on any door: another door of the same vault would say the
        // same, and one that did not would not be believed.
        if (isFatal(err) || readError !== undefined) throw readError ?? err;
        if (signal.aborted) break;
        const { from, to, delayMs } = doors.failed();
        onEvent({
          type: "disconnected",
          message: (err as Error).message,
          retryMs: delayMs,
          connected,
          server: doorText(from),
          ...(doors.doors.length > 1 && { next: doorText(to) }),
        });
        await sleep(delayMs, signal);
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

const SYNC = encodeFrame({ type: Kind.ShipSync, payload: new Uint8Array(0) });

/** What a session shares with the shipper around it. */
interface _Shared {
  spool: Spool;
  witness: Witness;
  spot: SpotCheck | undefined;
  /** The front door to connect to. */
  door: ServerAddr;
  /** Called once the door answered (ShipReady). */
  ready: () => void;
  /** Called when the door acknowledged new records. */
  progressed: () => void;
  finished: () => boolean;
  setWake: (wake: () => void) => void;
}

/**
 * One connection: handshake, resend from the server's position, stream,
 * collect acks. With receipts (a vault that signs checkpoints), an
 * acknowledged record leaves the spool only once a checkpoint that covers
 * it was accepted: every record is either still in the spool or in a tree
 * the vault signed for.
 */
async function session(options: ShipOptions, shared: _Shared): Promise<void> {
  const { spool, witness, spot, finished, setWake } = shared;
  const server = doorText(shared.door);
  const client = { ...options.client, server: shared.door };
  const { conn, reader, welcome } = await openSession(client, "ship", {
    source: options.source,
    receipts: witness.size,
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
  let auditTimer: ReturnType<typeof setInterval> | undefined;
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
    const raw = decodeShipReady(first.payload);
    const ready = safeReady(raw);
    // Before anything is sent or trimmed: is this the vault we know?
    const keyed = witness.keyed;
    const receipts = witness.offered(raw.vaultKey, server);
    if (!receipts && options.auditEvery) {
      throw witness.fail(
        `the vault at ${server} sends no signed checkpoints, so --audit-every cannot check it`,
      );
    }
    if (receipts) {
      const frame = await reader.readFrame();
      if (frame === null) {
        throw new ConnectionClosedError(
          "Connection closed by server before its first receipt",
        );
      }
      if (frame.type === Kind.Error) {
        throw errorFromFrame(decodeError(frame.payload));
      }
      if (frame.type !== Kind.ShipReceipt) {
        throw new ProtocolError(
          `Expected a ship receipt, got frame type 0x${
            frame.type.toString(16)
          }`,
        );
      }
      const held = witness.accept(
        decodeShipReceipt(frame.payload),
        raw.lastSeq,
      );
      if (!keyed) options.onEvent({ type: "pinned", key: raw.vaultKey! });
      options.onEvent({
        type: "receipt",
        size: held.size,
        covered: witness.covered,
      });
    }
    /** Acknowledged up to `seq`: trimmed only as far as a checkpoint covers. */
    const ack = (seq: number) => {
      spool.ack(receipts ? Math.min(seq, witness.covered) : seq);
    };
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
      ack(ready.lastSeq);
      options.backlog?.ack(ready.lastSeq);
    }
    shared.ready();
    options.onEvent({
      type: "connected",
      server,
      peer: ready.peer,
      source: ready.source,
      lastSeq: ready.lastSeq,
    });

    let sent = ready.lastSeq;
    /** The highest ack on this connection. */
    let acked = ready.lastSeq;
    let audit: PendingAudit | undefined;
    let syncing = false;
    let allAcked: () => void = () => {};
    const ackedAll = new Promise<void>((resolve) => (allAcked = resolve));
    const checkDone = () => {
      const done = finished() && sent >= spool.lastSeq;
      if (done) stop.abort();
      // Acknowledged records wait in the spool for a receipt: ask for one
      // now rather than in a second when they are all that is left, or
      // when they hold up reading.
      if (
        receipts && !syncing && acked > spool.ackedSeq &&
        (spool.full || (done && acked >= sent))
      ) {
        syncing = true;
        heartbeat.write(SYNC).catch(() => {});
      }
      if (done && spool.ackedSeq >= sent) allAcked();
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
        if (receipts && frame.type === Kind.ShipReceipt) {
          const held = witness.accept(
            decodeShipReceipt(frame.payload),
            acked,
          );
          ack(acked);
          syncing = false;
          options.onEvent({
            type: "receipt",
            size: held.size,
            covered: witness.covered,
          });
          checkDone();
          continue;
        }
        if (receipts && frame.type === Kind.ShipProof && audit !== undefined) {
          const proof = decodeShipProof(frame.payload);
          const { record, checkpoint } = audit;
          if (proof.seq !== record.seq || proof.size !== checkpoint.size) {
            throw new ProtocolError("A ship proof that was not asked for");
          }
          const wrong = checkAudit(proof, audit);
          if (wrong !== undefined) {
            throw witness.fail(
              `audit of record ${record.seq} against ${server}'s checkpoint of size ${checkpoint.size} failed: ${wrong}`,
            );
          }
          audit = undefined;
          options.onEvent({ type: "audited", seq: record.seq });
          continue;
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
        if (seq > acked && seq <= sent) {
          acked = seq;
          ack(seq);
          options.backlog?.ack(seq);
          shared.progressed();
        }
        checkDone();
      }
    })();
    acking.catch(() => stop.abort());

    if (receipts && spot !== undefined && options.auditEvery) {
      auditTimer = setInterval(() => {
        const checkpoint = witness.held;
        if (audit !== undefined || checkpoint === undefined) return;
        const record = spot.take(witness.covered, witness.first);
        if (record === undefined) return;
        audit = { record, checkpoint, first: witness.first };
        heartbeat.write(encodeFrame({
          type: Kind.ShipProve,
          payload: encodeShipProve({ seq: record.seq, size: checkpoint.size }),
        })).catch(() => {});
      }, Math.max(10, 60_000 / options.auditEvery));
    }

    checkDone();
    for await (
      const batch of spool.chunks(ready.lastSeq + 1, {
        follow: true,
        signal: stop.signal,
      })
    ) {
      for (
        const f of shipFrames(batch, FRAME_BUDGET, DEFAULT_MAX_BATCH_RECORDS)
      ) {
        await heartbeat.write(f.frame);
        sent = f.lastSeq;
        spot?.offer(decodeShipBatch(f.frame.subarray(HEADER_SIZE)));
      }
      checkDone();
    }
    if (!finished()) {
      // Stopped by the signal (or the ack loop failed): surface a failure.
      await Promise.race([acking, Promise.resolve()]);
      return;
    }
    await Promise.race([ackedAll, acking]);
    await heartbeat.stop();
    await conn.closeWrite().catch(() => {});
  } finally {
    clearInterval(auditTimer);
    void heartbeat.stop();
    options.signal.removeEventListener("abort", onAbort);
    setWake(() => {});
    conn.close();
  }
}
