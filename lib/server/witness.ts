/**
 * The witness mode of a server started by `moat witness`: a vault sends
 * signed checkpoints, one WitnessAdd frame each, and gets back a
 * cosignature, the size the witness holds (to retry with the right proof),
 * or a refusal. The checks are `lib/witness/witness.ts`'s; this file is the
 * wire and the audit lines.
 *
 * @module
 */

import { encodeFrame } from "../framer.ts";
import { decodeWitnessAdd, encodeJson, Kind } from "../protocol.ts";
import {
  Code,
  ConnectionClosedError,
  FrameTooLargeError,
  MoatError,
  ProtocolError,
  WitnessRefusedError,
} from "../errors.ts";
import type { Handshake } from "./handshake.ts";
import {
  errorCode,
  errorMessage,
  peerIdentity,
  type Session,
} from "./session.ts";

/**
 * Largest WitnessAdd payload: a checkpoint of at most 8 KiB, a key, and 64
 * proof hashes fit several times over. Refused from the header, unread.
 */
export const WITNESS_FRAME_MAX = 16 * 1024;

/**
 * Serves a vault after its Welcome: each WitnessAdd is answered, in order,
 * with WitnessCosigned or WitnessConflict. A checkpoint the witness refuses
 * ends the connection with an Error frame (`ERR_WITNESS_REFUSED`) and one
 * `witness_refused` audit line naming the checkpoint held and the one
 * offered.
 *
 * Refused with `ERR_NOT_WITNESS` on a server that is not a witness.
 *
 * @param s The session.
 * @param handshake The vault's Hello and its frames.
 * @throws {ProtocolError} For a frame that is not a WitnessAdd (after an
 * Error frame).
 * @throws {FrameTooLargeError} For a frame over
 * {@linkcode WITNESS_FRAME_MAX}, before its payload is read.
 */
export async function serveWitness(
  s: Session,
  handshake: Handshake,
): Promise<void> {
  const { audit, options } = s.server;
  const witness = options.witness;
  if (witness === undefined) {
    await s.sendError(
      new MoatError(
        Code.ERR_NOT_WITNESS,
        "This server is not a witness (run moat witness)",
      ),
    );
    s.reason = "witness request refused: not a witness";
    return;
  }
  const { reader } = handshake;
  const peer = peerIdentity(s.conn.remoteAddr.hostname);
  for (;;) {
    const header = await reader.readHeader();
    if (header === null) return;
    // Said to the vault before the close, so that it can tell a broken
    // request from a dropped connection.
    if (header.type !== Kind.WitnessAdd) {
      const err = new ProtocolError(
        `Expected a witness request frame, got type 0x${
          header.type.toString(16)
        }`,
      );
      await s.sendError(err);
      throw err;
    }
    if (header.length > WITNESS_FRAME_MAX) {
      // sniff.ts says this one.
      throw new FrameTooLargeError(header.length, WITNESS_FRAME_MAX);
    }
    let answer: Uint8Array;
    try {
      const request = decodeWitnessAdd(await reader.readPayload());
      const result = await witness.add(request, peer);
      if (result.kind === "conflict") {
        answer = encodeFrame({
          type: Kind.WitnessConflict,
          payload: encodeJson({ size: result.size }),
        });
      } else {
        audit.write("witness_cosigned", {
          peer: s.peer,
          name: s.name,
          origin: result.origin,
          from: result.from,
          size: result.size,
          ...(result.pinned && { pinned: true, key: request.key }),
        });
        answer = encodeFrame({
          type: Kind.WitnessCosigned,
          payload: encodeJson({ cosignature: result.cosignature }),
        });
      }
    } catch (err) {
      if (err instanceof ConnectionClosedError) throw err;
      if (err instanceof WitnessRefusedError) {
        // The line an operator must not miss: a vault showed a history
        // that contradicts what this witness already cosigned.
        audit.write("witness_refused", {
          peer: s.peer,
          name: s.name,
          origin: err.detail.origin,
          reason: err.reason,
          held: err.detail.held ?? null,
          offered: err.detail.offered ?? null,
        });
        s.reason = `witness refused a checkpoint: ${err.reason}`;
      } else if (
        err instanceof MoatError && err.code === Code.ERR_TOO_MANY_ORIGINS
      ) {
        audit.write("refused", {
          peer: s.peer,
          name: s.name,
          code: err.code,
          message: err.message,
        });
        s.reason = "witness refused: too many origins";
      } else {
        // Malformed requests, or the witness's own failure (its disk): the
        // peer hears what it may, the audit log has the rest.
        audit.write("error", {
          peer: s.peer,
          name: s.name,
          code: errorCode(err),
          message: errorMessage(err),
          during: "witness",
        });
        s.reason = `witness request failed: ${errorMessage(err)}`;
      }
      await s.sendError(err);
      return;
    }
    await s.conn.write(answer);
  }
}
