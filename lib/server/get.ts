/**
 * Serving files: framed gets, and the one `serveFile` that framed gets and
 * plain `FILE:` requests share.
 *
 * @module
 */

import { decodeGet, Kind } from "../protocol.ts";
import { DEFAULT_CHUNK_SIZE, sendFile } from "../file_sender.ts";
import type { DigestName } from "../digest.ts";
import {
  Code,
  ConnectionClosedError,
  MoatError,
  ProtocolError,
} from "../errors.ts";
import type { Handshake } from "./handshake.ts";
import { errorCode, errorMessage, type Session } from "./session.ts";

/** One file to send, for {@linkcode serveFile}. */
export interface FileRequest {
  /** The path as the client asked for it (the jail checks it). */
  path: string;
  /** Framed (FileMeta, FileData…, FileEnd) or the raw bytes. */
  framed: boolean;
  /** Where to start (a resumed get). */
  offset: number;
  /** Largest FileData payload. */
  chunkSize: number;
  /** The digest the client asked for. @default {"crc32"} */
  digest?: DigestName;
}

/**
 * Serves a framed get client after its Welcome: one file per Get frame,
 * until the client closes or a file is refused.
 *
 * @param s The session.
 * @param handshake The client's Hello and its frames.
 * @throws {ProtocolError} For a frame that is not a Get frame.
 */
export async function serveGets(
  s: Session,
  handshake: Handshake,
): Promise<void> {
  const { hello, reader } = handshake;
  for (;;) {
    const frame = await reader.readFrame();
    if (frame === null) return;
    if (frame.type !== Kind.Get) {
      throw new ProtocolError(
        `Expected a get frame, got type 0x${frame.type.toString(16)}`,
      );
    }
    const req = decodeGet(frame.payload);
    const ok = await serveFile(s, {
      path: req.path,
      framed: true,
      offset: req.offset,
      ...(req.digest && { digest: req.digest }),
      chunkSize: Math.min(DEFAULT_CHUNK_SIZE, hello.maxFrameSize),
    });
    if (!ok) return;
  }
}

/**
 * Sends one file from the jail, audited; on a refusal, tells the client (an
 * Error frame, or one ERR line on a plain connection) and sets the
 * session's reason.
 *
 * @param s The session.
 * @param request The file and how to send it.
 * @returns True once the whole file was sent; false after a refusal or a
 * failed transfer.
 */
export async function serveFile(
  s: Session,
  request: FileRequest,
): Promise<boolean> {
  const { audit, options, cache, sendBudget } = s.server;
  const started = Date.now();
  audit.write("get_started", {
    peer: s.peer,
    name: s.name,
    path: request.path,
    offset: request.offset,
    mode: request.framed ? "framed" : "plain",
  });
  let file;
  try {
    // Only a witness has no jail, and it never gets here (sniff.ts).
    if (options.jail === undefined) {
      throw new MoatError(Code.ERR_NOT_WITNESS, "This server serves no files");
    }
    file = await options.jail.open(request.path);
    if (request.offset > file.size) {
      throw new MoatError(
        Code.ERR_BAD_OFFSET,
        `Resume offset ${request.offset} is past the end of "${file.path}" (${file.size} bytes)`,
      );
    }
  } catch (err) {
    file?.close();
    // The audit log keeps the raw error; the peer is told what it may know.
    const code = errorCode(err);
    audit.write("error", {
      peer: s.peer,
      name: s.name,
      path: request.path,
      code,
      message: errorMessage(err),
    });
    if (request.framed) await s.sendError(err);
    else await s.sendErrorLine(err);
    s.reason = `refused path: ${code}`;
    return false;
  }
  try {
    const result = await sendFile(s.conn, file, {
      offset: request.offset,
      chunkSize: request.chunkSize,
      framed: request.framed,
      ...(request.digest && { digest: request.digest }),
      cache,
      onProgress: () => s.touch(),
      // A transfer waiting for room still obeys the idle timeout: the sweep
      // closes the session, which ends the wait.
      buffers: sendBudget.for(s.closed),
    });
    audit.write("get_finished", {
      peer: s.peer,
      name: s.name,
      path: file.path,
      bytes: result.bytes,
      size: file.size,
      ...(result.digest && { [result.digestName]: result.digest }),
      durationMs: Date.now() - started,
    });
    return true;
  } catch (err) {
    const message = errorMessage(err);
    audit.write("error", {
      peer: s.peer,
      name: s.name,
      path: file.path,
      code: errorCode(err),
      message,
      during: "transfer",
    });
    if (request.framed && !(err instanceof ConnectionClosedError)) {
      await s.sendError(err);
    }
    // An idle timeout or a shutdown that cut the transfer is the reason.
    s.reason ??= `transfer aborted: ${message}`;
    return false;
  } finally {
    file.close();
  }
}
