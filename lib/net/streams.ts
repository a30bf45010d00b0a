/**
 * Web stream views over any {@linkcode Conn}'s pull API, shared by the
 * adapters whose runtime streams do not half-close properly.
 *
 * @module
 */

import type { Conn } from "./types.ts";

/** Chunk size the `readable` view allocates for default (non-BYOB) readers. */
const STREAM_CHUNK_SIZE = 65_536;

/**
 * A byte stream over `conn.read`; BYOB readers fill their own buffers.
 *
 * @param conn The connection to read.
 * @returns A `bytes` stream; cancelling it closes `conn`.
 */
export function readableFrom(conn: Conn): ReadableStream<Uint8Array> {
  return new ReadableStream({
    type: "bytes",
    autoAllocateChunkSize: STREAM_CHUNK_SIZE,
    async pull(controller) {
      const request = controller.byobRequest;
      const view = request?.view;
      if (request && view) {
        const target = new Uint8Array(
          view.buffer,
          view.byteOffset,
          view.byteLength,
        );
        const n = await conn.read(target);
        if (n === null) {
          controller.close();
          request.respond(0);
        } else {
          request.respond(n);
        }
        return;
      }
      const chunk = new Uint8Array(STREAM_CHUNK_SIZE);
      const n = await conn.read(chunk);
      if (n === null) controller.close();
      else controller.enqueue(chunk.subarray(0, n));
    },
    cancel() {
      conn.close();
    },
  });
}

/**
 * A sink over `conn.write`; closing it half-closes, aborting it closes.
 *
 * @param conn The connection to write.
 * @returns The sink.
 */
export function writableFrom(conn: Conn): WritableStream<Uint8Array> {
  return new WritableStream({
    write: (chunk) => conn.write(chunk),
    close: () => conn.closeWrite(),
    abort: () => conn.close(),
  });
}
