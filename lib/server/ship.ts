/**
 * Ship ingest: shipped log records into the vault, each batch acknowledged
 * once it is durable.
 *
 * @module
 */

import { endPlain } from "./plain.ts";
import { encodeFrame } from "../framer.ts";
import {
  encodeJson,
  indexShipBatch,
  Kind,
  SHIP_RECORD_HEADER,
} from "../protocol.ts";
import {
  Code,
  ConnectionClosedError,
  MoatError,
  ProtocolError,
  TooManyRecordsError,
} from "../errors.ts";
import { DEFAULT_MAX_BATCH_RECORDS } from "../limits.ts";
import {
  APPEND_FAILED,
  AppendPipeline,
  encodedCost,
} from "./append_pipeline.ts";
import type { Handshake } from "./handshake.ts";
import { Outbox } from "./outbox.ts";
import {
  errorCode,
  errorMessage,
  peerIdentity,
  type Session,
} from "./session.ts";
import { SYSLOG_SOURCE } from "./syslog.ts";
import { sourceKey, type VaultSource } from "../vault/store.ts";
import { receiptKey, ShipReceipts } from "./receipts.ts";

/**
 * Bytes of acks (13 each) that may wait for a shipper that is not reading
 * them before the server stops reading its batches.
 */
export const ACKS_QUEUED_MAX = 4096;

/**
 * Serves a shipper after its Welcome: takes its records into the vault and
 * acknowledges each batch once it is fsync'd. Appends are pipelined (the
 * vault keeps their order) but at most 8 batches wait at once, and no batch
 * is read while more than {@linkcode ACKS_QUEUED_MAX} bytes of acks wait for
 * the shipper to read them: both bound memory. Records the source already has are dropped by the vault, so a
 * shipper's resend after a reconnect stores nothing twice.
 *
 * Refused with an Error frame when the server keeps no vault, or when the
 * shipper names the syslog port's source. An append that fails (a refused
 * record, or the vault's disk full or out of descriptors) is told to the
 * shipper at once, in an Error frame (system errors as `ERR_INTERNAL`, never
 * with a server path), after the acks of what was stored; the connection
 * then closes, and the shipper resends the rest when it reconnects.
 *
 * @param s The session.
 * @param handshake The shipper's Hello (its source name) and its frames.
 * @throws {ProtocolError} For a frame that is not a ShipBatch (only after
 * what was stored is acknowledged).
 */
export async function serveShip(
  s: Session,
  handshake: Handshake,
): Promise<void> {
  const { audit, options } = s.server;
  const { hello, reader } = handshake;
  const vault = options.vault;
  if (vault === undefined) {
    await s.sendError(
      new MoatError(
        Code.ERR_NO_VAULT,
        "This server keeps no vault (start it with --vault DIR)",
      ),
    );
    s.reason = "ship refused: no vault";
    return;
  }
  if (hello.source === SYSLOG_SOURCE) {
    // The syslog port numbers these records itself: a shipper's sequence
    // numbers in the same source would collide with them. ERR_PROTOCOL:
    // the shipper gives up instead of retrying.
    await s.sendError(
      new ProtocolError(
        `Source name "${SYSLOG_SOURCE}" is reserved for the syslog port (ship with another --source)`,
      ),
    );
    s.reason = "ship refused: reserved source name";
    return;
  }
  // The peer part of the key comes from the connection, never from the
  // shipper, so one host cannot write into another host's records. The
  // address is always part of it, and an authenticated identity (certificate
  // fingerprint, token name) is added to it: two hosts sharing one
  // credential still never share a source.
  const key = sourceKey({
    address: peerIdentity(s.conn.remoteAddr.hostname),
    identity: s.identity,
  }, hello.source!);
  let source: VaultSource;
  try {
    source = vault.source(key);
    // Another front door of a shared vault may have taken this source's
    // records since: the shipper resumes after them, not before.
    await vault.catchUp?.(key);
  } catch (err) {
    // A refused name, or too many sources for this peer: said to the peer
    // (those codes carry no server path); anything else (a system error
    // naming the vault's path) reaches it only as ERR_INTERNAL. The audit
    // log keeps the raw error.
    const message = errorMessage(err);
    audit.write("refused", {
      peer: s.peer,
      name: s.name,
      source: key.name,
      code: errorCode(err),
      message,
    });
    await s.sendError(err);
    s.reason = `ship refused: ${message}`;
    return;
  }
  // Receipts only for a shipper that asked: an older one would take a
  // ShipReceipt for a broken ack.
  const vaultKey = receiptKey(vault, hello);
  await s.conn.write(encodeFrame({
    type: Kind.ShipReady,
    payload: encodeJson({
      peer: key.peer,
      source: key.name,
      lastSeq: source.lastSeq,
      ...(vaultKey !== undefined && { vaultKey }),
    }),
  }));
  audit.write("ship_started", {
    peer: s.peer,
    name: s.name,
    source: key.name,
    lastSeq: source.lastSeq,
  });
  s.source = key.name;
  const unwatch = s.server.sources.attach(key, source, s);
  const acks = new Outbox(s);
  const receipts = vaultKey === undefined ? undefined : new ShipReceipts(s, {
    vault,
    key,
    out: acks,
    hello,
  });
  const out = receipts ?? acks;
  const ack = new Uint8Array(8);
  const appends = new AppendPipeline(source, {
    budget: s.server.appendBudget,
    signal: s.closed,
    onDurable: (seq) => {
      new DataView(ack.buffer).setFloat64(0, seq, true);
      out.push(encodeFrame({ type: Kind.ShipAck, payload: ack }));
    },
  });
  // A frame read still under way when an append failed.
  let pendingRead: Promise<unknown> | undefined;
  try {
    while (!appends.failed) {
      // A shipper that does not read its acks is not read either: its acks
      // stay a few KiB, and its next batches wait in its socket.
      if (out.pending > ACKS_QUEUED_MAX) {
        await s.server.pauses.during(out.flush());
      }
      // An append that fails while the next frame is awaited ends the wait:
      // the shipper, waiting for its ack, would send nothing more. (The read
      // ends with the connection's close.)
      const reading = reader.readFrame();
      const frame = await appends.orFailure(reading);
      if (frame === APPEND_FAILED) {
        pendingRead = reading;
        break;
      }
      if (frame === null) break;
      if (frame.type === Kind.ShipProve && receipts !== undefined) {
        await receipts.prove(frame.payload);
        continue;
      }
      if (frame.type === Kind.ShipSync && receipts !== undefined) {
        await receipts.sync(frame.payload);
        continue;
      }
      if (frame.type !== Kind.ShipBatch) {
        throw new ProtocolError(
          `Expected a ship batch frame, got type 0x${frame.type.toString(16)}`,
        );
      }
      // Refused before decoding: a 1 MiB frame of empty records would be
      // 50,000 objects, where the vault takes 4,096 at once.
      const count = countShipRecords(frame.payload);
      if (count > DEFAULT_MAX_BATCH_RECORDS) {
        throw new TooManyRecordsError(count, DEFAULT_MAX_BATCH_RECORDS);
      }
      if (frame.payload.length === 0) continue;
      // Decoded once the shared append budget has room: a shipper waiting
      // for it holds its frame's bytes, not thousands of records. Read by
      // index even then: an object per record was most of the garbage a
      // flood of empty records made.
      const payload = frame.payload;
      await appends.push({
        cost: encodedCost(payload.length, count),
        decode: () => indexShipBatch(payload),
      }, { recvTs: Date.now() });
    }
    await appends.finish();
    receipts?.close();
    await out.flush();
  } catch (err) {
    await appends.settle();
    const message = errorMessage(err);
    // Nothing unacknowledged is lost: the shipper still holds it and resends.
    audit.write("error", {
      peer: s.peer,
      name: s.name,
      source: key.name,
      code: errorCode(err),
      message,
      during: "ship",
    });
    receipts?.close();
    if (!(err instanceof ConnectionClosedError)) {
      await out.flush();
      await s.sendError(err);
      // Half-close, then discard what the shipper still sends until it read
      // the Error frame and closed (or the linger deadline): closing with
      // its batches unread resets the connection, and a reset can destroy
      // the Error frame in the shipper's kernel before it is read.
      await endPlain(s);
      try {
        await pendingRead;
        while ((await reader.readFrame()) !== null) {
          // Discarded.
        }
      } catch {
        // A broken or closed connection: nothing left to wait for.
      }
    }
    s.reason = `ship ended: ${message}`;
  } finally {
    receipts?.close();
    unwatch();
    audit.write("ship_finished", {
      peer: s.peer,
      name: s.name,
      source: key.name,
      records: appends.stored,
      lastSeq: source.lastSeq,
    });
  }
}

/**
 * The records of a ShipBatch payload, counted from their headers (each
 * `SHIP_RECORD_HEADER` bytes, the line's length at offset 17) without
 * decoding them; a truncated record is left to `indexShipBatch` to refuse.
 */
function countShipRecords(payload: Uint8Array): number {
  const view = new DataView(
    payload.buffer,
    payload.byteOffset,
    payload.byteLength,
  );
  let count = 0;
  for (let at = 0; at + SHIP_RECORD_HEADER <= payload.length; count++) {
    at += SHIP_RECORD_HEADER + view.getUint32(at + 17, true);
  }
  return count;
}
