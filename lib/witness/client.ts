/**
 * The vault's side of the witness protocol: one connection in mode
 * "witness", WitnessAdd frames sent one at a time, each answered with a
 * cosignature, the size the witness holds, or an Error frame (then the
 * witness closes).
 *
 * @module
 */

import { type ClientOptions, openSession, type Session } from "../client.ts";
import { encodeFrame } from "../framer.ts";
import {
  decodeError,
  decodeWitnessConflict,
  decodeWitnessCosigned,
  encodeWitnessAdd,
  Kind,
  type WitnessAdd,
} from "../protocol.ts";
import {
  ConnectionClosedError,
  errorFromFrame,
  MoatError,
  ProtocolError,
} from "../errors.ts";

/** A witness's answer to one {@linkcode WitnessAdd}. */
export type WitnessAnswer =
  | { kind: "cosigned"; cosignature: string }
  | { kind: "conflict"; size: number };

/** Default {@linkcode WitnessConnection.request} timeout: 30 s. */
export const DEFAULT_WITNESS_TIMEOUT_MS = 30_000;

/** An open connection to a witness, past its Welcome. */
export class WitnessConnection {
  #session: Session;
  #timeoutMs: number;
  #closed = false;

  /**
   * Connects and runs the handshake in mode "witness".
   *
   * @param options The witness's address, TLS and token, and the timeout
   * of the connection and of each answer.
   * @param signal Aborting it ends the connection attempt.
   * @returns The connection.
   * @throws {MoatError} What {@linkcode openSession} throws: refused,
   * unreachable, timed out.
   */
  static async open(
    options: ClientOptions,
    signal?: AbortSignal,
  ): Promise<WitnessConnection> {
    const session = await openSession(options, "witness", {}, signal);
    return new WitnessConnection(
      session,
      options.timeoutMs ?? DEFAULT_WITNESS_TIMEOUT_MS,
    );
  }

  /**
   * Wraps a session already in mode "witness" (see
   * {@linkcode WitnessConnection.open}).
   *
   * @param session The session, past its Welcome.
   * @param timeoutMs Longest wait for each answer.
   */
  constructor(session: Session, timeoutMs: number) {
    this.#session = session;
    this.#timeoutMs = timeoutMs;
  }

  /**
   * Sends one checkpoint and reads the answer.
   *
   * @param add The vault key, the size the witness is believed to hold, the
   * proof from it, and the signed checkpoint.
   * @returns The cosignature line, or the size the witness holds.
   * @throws {MoatError} The witness's refusal (`ERR_WITNESS_REFUSED`,
   * `ERR_TOO_MANY_ORIGINS`…; the connection is then over), `ERR_TIMEOUT`
   * when no answer comes in time, or a closed connection.
   */
  async request(add: WitnessAdd): Promise<WitnessAnswer> {
    const { conn, reader } = this.#session;
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      conn.close();
    }, this.#timeoutMs);
    try {
      await conn.write(
        encodeFrame({ type: Kind.WitnessAdd, payload: encodeWitnessAdd(add) }),
      );
      const frame = await reader.readFrame();
      if (frame === null) {
        throw new ConnectionClosedError("The witness closed the connection");
      }
      switch (frame.type) {
        case Kind.WitnessCosigned:
          return {
            kind: "cosigned",
            cosignature: decodeWitnessCosigned(frame.payload),
          };
        case Kind.WitnessConflict:
          return {
            kind: "conflict",
            size: decodeWitnessConflict(frame.payload),
          };
        case Kind.Error:
          this.close();
          throw errorFromFrame(decodeError(frame.payload));
        default:
          throw new ProtocolError(
            `Expected a witness answer, got type 0x${frame.type.toString(16)}`,
          );
      }
    } catch (err) {
      this.close();
      if (late) {
        throw new MoatError(
          "ERR_TIMEOUT",
          `The witness did not answer within ${this.#timeoutMs / 1000} s`,
          undefined,
          { cause: err },
        );
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Whether the connection is closed (after an error, or `close`). */
  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the connection. */
  close(): void {
    this.#closed = true;
    this.#session.conn.close();
  }
}
