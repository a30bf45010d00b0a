/**
 * The moat frame codec and the two ways to drive it.
 *
 * A frame on the wire is a 1-byte type (1 to 255), a 4-byte big-endian
 * unsigned payload length, and the payload:
 *
 * ```text
 * +------+---------------------+-----------------+
 * | type | length (u32, BE)    | payload         |
 * +------+---------------------+-----------------+
 *   1 B          4 B              length bytes
 * ```
 *
 * The framer does not know what the types mean. It checks only that the type
 * is not 0 and that the declared length does not exceed a limit, and it checks
 * the length before it allocates anything for the payload.
 *
 * - {@linkcode encodeHeader}, {@linkcode encodeFrame} and
 *   {@linkcode decodeHeader} are the codec: pure functions over `Uint8Array`.
 * - {@linkcode FrameReader} pulls from a socket into one reused buffer and can
 *   pass payload bytes through without copying them
 *   ({@linkcode FrameReader.prototype.readFragment}). moat itself reads every
 *   frame with it (handshake, chat, control messages, the bulk data path) and
 *   writes with {@linkcode encodeFrame}, or {@linkcode encodeHeader} in place
 *   ahead of a file chunk.
 * - {@linkcode FrameEncoderStream} and {@linkcode FrameDecoderStream} wrap the
 *   codec in Web Streams, for API users who hold a `ReadableStream` /
 *   `WritableStream` pair. No command uses them; the tests and the framer fuzz
 *   soak (`soak/framer_fuzz.ts`) check them against the same reference decoder
 *   as `FrameReader`.
 *
 * @module
 */

import {
  ConnectionClosedError,
  FrameTooLargeError,
  ProtocolError,
} from "./errors.ts";

/** Size of a frame header in bytes: 1 type byte and a 4-byte length. */
export const HEADER_SIZE = 5;

/** Default largest payload a decoder or reader accepts, in bytes (1 MiB). */
export const DEFAULT_MAX_FRAME_SIZE = 1_048_576;

/** Largest length the 4-byte header can carry. */
const MAX_LENGTH = 0xffff_ffff;

/** Reads go to positions that are multiples of this many bytes. */
const READ_ALIGNMENT = 64;

/** Consecutive empty reads tolerated before the source is declared broken. */
const MAX_EMPTY_READS = 64;

/** One frame: a type from 1 to 255 and its payload. */
export interface Frame {
  /** Frame type, an integer from 1 to 255. */
  type: number;
  /** Payload bytes; at most 2^32 - 1 of them. */
  payload: Uint8Array;
}

/** A decoded frame header. */
export interface FrameHeader {
  /** Frame type, an integer from 1 to 255. */
  type: number;
  /** Payload length in bytes. */
  length: number;
}

/**
 * Writes a 5-byte frame header into `target` at `offset`.
 *
 * @example Encode a header into a new array
 * ```ts
 * import { encodeHeader } from "./framer.ts";
 * import assert from "node:assert/strict";
 *
 * assert.deepEqual(encodeHeader(2, 258), new Uint8Array([2, 0, 0, 1, 2]));
 * ```
 *
 * @example Encode a header in front of a payload that is already in place
 * ```ts
 * import { encodeHeader } from "./framer.ts";
 * import assert from "node:assert/strict";
 *
 * const buf = new Uint8Array(8);
 * buf.set([7, 8, 9], 5);
 * encodeHeader(1, 3, buf);
 * assert.deepEqual(buf, new Uint8Array([1, 0, 0, 0, 3, 7, 8, 9]));
 * ```
 *
 * @param type Frame type, an integer from 1 to 255.
 * @param length Payload length, an integer from 0 to 2^32 - 1.
 * @param target Array to write into. Defaults to a new 5-byte array.
 * @param offset Position of the header in `target`. Defaults to 0.
 * @returns `target`.
 * @throws {RangeError} If `type` or `length` is out of range, or the header
 * does not fit in `target` at `offset`.
 */
export function encodeHeader(
  type: number,
  length: number,
  target: Uint8Array = new Uint8Array(HEADER_SIZE),
  offset = 0,
): Uint8Array {
  if (!Number.isInteger(type) || type < 1 || type > 255) {
    throw new RangeError(
      `Cannot encode frame: type ${type} is not an integer from 1 to 255`,
    );
  }
  if (!Number.isInteger(length) || length < 0 || length > MAX_LENGTH) {
    throw new RangeError(
      `Cannot encode frame: length ${length} is not an integer from 0 to ${MAX_LENGTH}`,
    );
  }
  if (
    !Number.isInteger(offset) || offset < 0 ||
    offset + HEADER_SIZE > target.length
  ) {
    throw new RangeError(
      `Cannot encode frame: header at offset ${offset} does not fit in ${target.length} bytes`,
    );
  }
  target[offset] = type;
  target[offset + 1] = length >>> 24;
  target[offset + 2] = length >>> 16;
  target[offset + 3] = length >>> 8;
  target[offset + 4] = length;
  return target;
}

/**
 * Encodes a whole frame, header and payload, into one new array.
 *
 * @example Encode a frame
 * ```ts
 * import { encodeFrame } from "./framer.ts";
 * import assert from "node:assert/strict";
 *
 * const bytes = encodeFrame({ type: 3, payload: new Uint8Array([104, 105]) });
 * assert.deepEqual(bytes, new Uint8Array([3, 0, 0, 0, 2, 104, 105]));
 * ```
 *
 * @param frame The frame to encode.
 * @returns A new array of `HEADER_SIZE + frame.payload.length` bytes.
 * @throws {RangeError} If the type is not from 1 to 255 or the payload is
 * longer than 2^32 - 1 bytes.
 */
export function encodeFrame(frame: Frame): Uint8Array<ArrayBuffer> {
  const { type, payload } = frame;
  // Validate before allocating the output.
  encodeHeader(type, payload.length);
  const bytes = new Uint8Array(HEADER_SIZE + payload.length);
  encodeHeader(type, payload.length, bytes);
  bytes.set(payload, HEADER_SIZE);
  return bytes;
}

/** Options for {@linkcode decodeHeader}. */
export interface DecodeHeaderOptions {
  /** Largest payload accepted, in bytes. @default {1_048_576} */
  maxFrameSize?: number;
}

/**
 * Decodes and checks the frame header at the start of `bytes`.
 *
 * @example Decode a header
 * ```ts
 * import { decodeHeader } from "./framer.ts";
 * import assert from "node:assert/strict";
 *
 * const header = decodeHeader(new Uint8Array([2, 0, 0, 1, 2, 99]));
 * assert.deepEqual(header, { type: 2, length: 258 });
 * ```
 *
 * @example Reject a length over the limit
 * ```ts
 * import { decodeHeader } from "./framer.ts";
 * import { FrameTooLargeError } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * assert.throws(
 *   () => decodeHeader(new Uint8Array([1, 0, 0, 0, 9]), { maxFrameSize: 8 }),
 *   FrameTooLargeError,
 * );
 * ```
 *
 * @param bytes At least {@linkcode HEADER_SIZE} bytes; only the first 5 are read.
 * @param options Limit on the declared length.
 * @returns The frame type and payload length.
 * @throws {ProtocolError} If the type is 0.
 * @throws {FrameTooLargeError} If the length exceeds `maxFrameSize`.
 * @throws {RangeError} If `bytes` is shorter than 5 bytes or `maxFrameSize`
 * is not a non-negative integer.
 */
export function decodeHeader(
  bytes: Uint8Array,
  options?: DecodeHeaderOptions,
): FrameHeader {
  const maxFrameSize = checkMaxFrameSize(options?.maxFrameSize);
  if (bytes.length < HEADER_SIZE) {
    throw new RangeError(
      `Cannot decode frame: header needs ${HEADER_SIZE} bytes, got ${bytes.length}`,
    );
  }
  return decodeHeaderAt(bytes, 0, maxFrameSize);
}

/** Options for {@linkcode FrameDecoderStream}. */
export interface FrameDecoderStreamOptions {
  /** Largest payload accepted, in bytes. @default {1_048_576} */
  maxFrameSize?: number;
}

/**
 * Turns a stream of frames into a stream of encoded bytes, one chunk per
 * frame.
 *
 * The stream errors with a `RangeError` if a frame's type is not from 1 to 255
 * or its payload is longer than 2^32 - 1 bytes.
 *
 * @example Encode frames
 * ```ts
 * import { FrameEncoderStream } from "./framer.ts";
 * import assert from "node:assert/strict";
 *
 * const chunks = await Array.fromAsync(
 *   ReadableStream.from([{ type: 1, payload: new Uint8Array([42]) }])
 *     .pipeThrough(new FrameEncoderStream()),
 * );
 * assert.deepEqual(chunks, [new Uint8Array([1, 0, 0, 0, 1, 42])]);
 * ```
 *
 * @example Send frames on a connection
 * ```ts ignore
 * const frames = new FrameEncoderStream();
 * frames.readable.pipeTo(conn.writable);
 * const writer = frames.writable.getWriter();
 * await writer.write({ type: 1, payload: new TextEncoder().encode("hello") });
 * ```
 */
export class FrameEncoderStream extends TransformStream<Frame, Uint8Array> {
  /** Creates an encoder. */
  constructor() {
    super({
      transform: (frame, controller) => {
        controller.enqueue(encodeFrame(frame));
      },
    });
  }
}

/**
 * Turns a stream of bytes, split anywhere, into a stream of frames.
 *
 * A payload that arrives inside one input chunk is passed on as a view of
 * that chunk (no copy), so it may share its `buffer` with other bytes; a
 * payload split across chunks is copied into a new array once it is complete.
 *
 * The stream errors with a {@linkcode ProtocolError} for frame type 0 or when
 * the input ends inside a frame, and with a {@linkcode FrameTooLargeError} as
 * soon as a header declares a length over `maxFrameSize`, before any of that
 * payload is buffered.
 *
 * @example Decode frames from chunks split anywhere
 * ```ts
 * import { FrameDecoderStream } from "./framer.ts";
 * import assert from "node:assert/strict";
 *
 * const chunks = [new Uint8Array([1, 0, 0]), new Uint8Array([0, 2, 7, 8, 2])];
 * const tail = new Uint8Array([0, 0, 0, 0]);
 * const frames = await Array.fromAsync(
 *   ReadableStream.from([...chunks, tail]).pipeThrough(new FrameDecoderStream()),
 * );
 * assert.deepEqual(frames, [
 *   { type: 1, payload: new Uint8Array([7, 8]) },
 *   { type: 2, payload: new Uint8Array([]) },
 * ]);
 * ```
 *
 * @example Read frames from a connection
 * ```ts ignore
 * const frames = conn.readable.pipeThrough(
 *   new FrameDecoderStream({ maxFrameSize: 65_536 }),
 * );
 * for await (const frame of frames) handle(frame);
 * ```
 */
export class FrameDecoderStream extends TransformStream<Uint8Array, Frame> {
  /**
   * The incomplete unit (header or payload), copied into a buffer of its
   * exact size: holding views of the input chunks instead would pin their
   * whole buffers, so memory would no longer be bounded by the frame limit.
   */
  #unit: Uint8Array | undefined;
  /** Bytes of `#unit` filled so far. */
  #buffered = 0;
  /** Type of the frame whose payload is awaited; 0 while awaiting a header. */
  #type = 0;
  /** Length of the payload being awaited. */
  #length = 0;
  #maxFrameSize: number;

  /**
   * Creates a decoder.
   *
   * @param options Limit on the declared payload length.
   * @throws {RangeError} If `maxFrameSize` is not a non-negative integer.
   */
  constructor(options?: FrameDecoderStreamOptions) {
    super({
      transform: (chunk, controller) => {
        this.#handle(chunk, controller);
      },
      flush: () => {
        this.#flush();
      },
    });
    this.#maxFrameSize = checkMaxFrameSize(options?.maxFrameSize);
  }

  #handle(
    chunk: Uint8Array,
    controller: TransformStreamDefaultController<Frame>,
  ) {
    const length = chunk.length;
    let offset = 0;
    // Each pass consumes at least one byte or returns.
    while (offset < length) {
      const inHeader = this.#type === 0;
      const want = inHeader ? HEADER_SIZE : this.#length;
      const missing = want - this.#buffered;
      const available = length - offset;
      if (available < missing) {
        if (available > 0) {
          // `want` is at most maxFrameSize: decodeHeaderAt checked it.
          this.#unit ??= new Uint8Array(want);
          this.#unit.set(chunk.subarray(offset), this.#buffered);
          this.#buffered += available;
        }
        return;
      }
      let unit: Uint8Array;
      if (this.#buffered === 0) {
        unit = chunk.subarray(offset, offset + want);
      } else {
        unit = this.#unit!;
        unit.set(chunk.subarray(offset, offset + missing), this.#buffered);
        this.#unit = undefined;
        this.#buffered = 0;
      }
      offset += missing;
      if (inHeader) {
        const header = decodeHeaderAt(unit, 0, this.#maxFrameSize);
        if (header.length === 0) {
          controller.enqueue({ type: header.type, payload: new Uint8Array(0) });
        } else {
          this.#type = header.type;
          this.#length = header.length;
        }
      } else {
        controller.enqueue({ type: this.#type, payload: unit });
        this.#type = 0;
        this.#length = 0;
      }
    }
  }

  #flush() {
    if (this.#type !== 0) {
      throw truncatedFrameError(
        HEADER_SIZE + this.#buffered,
        HEADER_SIZE + this.#length,
      );
    }
    if (this.#buffered > 0) {
      throw truncatedFrameError(this.#buffered, HEADER_SIZE);
    }
  }
}

/**
 * Where a {@linkcode FrameReader} gets its bytes. A `Conn` from `lib/net`
 * is one.
 */
export interface ByteSource {
  /**
   * Fills `buf` with up to `buf.length` bytes and resolves the count, or null
   * at end of input.
   */
  read(buf: Uint8Array): Promise<number | null>;
}

/** Options for {@linkcode FrameReader}. */
export interface FrameReaderOptions {
  /** Largest payload accepted, in bytes. @default {1_048_576} */
  maxFrameSize?: number;
  /**
   * Size of the one internal buffer, in bytes; the largest fragment and the
   * largest {@linkcode FrameReader.prototype.readExact} read. At least
   * {@linkcode HEADER_SIZE}. @default {1_048_576}
   */
  bufferSize?: number;
  /**
   * Bytes already taken from the source (say, to tell a protocol by its
   * first byte), served before anything read. At most `bufferSize`.
   */
  prefix?: Uint8Array;
}

/**
 * Reads frames from a {@linkcode ByteSource} through one internal buffer that
 * is allocated once and reused: the pull loop for the bulk data path.
 *
 * Read a header with {@linkcode FrameReader.prototype.readHeader}, then
 * consume its payload in one of three ways:
 * {@linkcode FrameReader.prototype.readFragment} (views into the internal
 * buffer, no copy, for streaming large payloads),
 * {@linkcode FrameReader.prototype.readPayload} (one new array), or
 * {@linkcode FrameReader.prototype.skipPayload}.
 * {@linkcode FrameReader.prototype.readFrame} does header and payload at once.
 *
 * Socket reads go to 64-byte aligned positions of the buffer: when the buffer
 * is used up, the next read goes to its start. A payload larger than the
 * buffer is never reassembled by `readFragment`.
 *
 * Await each call before making the next; calls must not overlap.
 *
 * @example Read whole frames
 * ```ts
 * import { encodeFrame, FrameReader } from "./framer.ts";
 * import assert from "node:assert/strict";
 *
 * let wire: Uint8Array | null = encodeFrame({ type: 4, payload: new Uint8Array([1, 2]) });
 * const source = {
 *   read(buf: Uint8Array) {
 *     if (wire === null) return Promise.resolve(null);
 *     buf.set(wire);
 *     const n = wire.length;
 *     wire = null;
 *     return Promise.resolve(n);
 *   },
 * };
 * const reader = new FrameReader(source, { bufferSize: 64 });
 * assert.deepEqual(await reader.readFrame(), { type: 4, payload: new Uint8Array([1, 2]) });
 * assert.equal(await reader.readFrame(), null);
 * ```
 *
 * @example Stream a large payload to a file without copying it
 * ```ts ignore
 * const reader = new FrameReader(conn, { maxFrameSize: 16 * 1_048_576 });
 * const header = await reader.readHeader();
 * if (header?.type === FILE_DATA) {
 *   for (let part; (part = await reader.readFragment()) !== null;) {
 *     await file.write(part); // part is only valid until the next call
 *   }
 * }
 * ```
 */
export class FrameReader {
  #source: ByteSource;
  #buf: Uint8Array<ArrayBuffer>;
  #maxFrameSize: number;
  /** Buffered, unconsumed bytes are `#buf[#start..#end)`. */
  #start = 0;
  #end = 0;
  #eof = false;
  /** Bytes of the current payload not yet consumed. */
  #remaining = 0;

  /**
   * Creates a reader and allocates its buffer.
   *
   * @param source Where the bytes come from, such as a `Conn`.
   * @param options Payload limit and buffer size.
   * @throws {RangeError} If `maxFrameSize` is not a non-negative integer,
   * `bufferSize` is not an integer of at least 5, or `prefix` is longer.
   */
  constructor(source: ByteSource, options?: FrameReaderOptions) {
    this.#maxFrameSize = checkMaxFrameSize(options?.maxFrameSize);
    const bufferSize = options?.bufferSize ?? DEFAULT_MAX_FRAME_SIZE;
    if (!Number.isSafeInteger(bufferSize) || bufferSize < HEADER_SIZE) {
      throw new RangeError(
        `Cannot create frame reader: bufferSize ${bufferSize} is not an integer of at least ${HEADER_SIZE}`,
      );
    }
    const prefix = options?.prefix;
    if (prefix !== undefined && prefix.length > bufferSize) {
      throw new RangeError(
        `Cannot create frame reader: a ${prefix.length}-byte prefix exceeds bufferSize ${bufferSize}`,
      );
    }
    this.#source = source;
    this.#buf = new Uint8Array(bufferSize);
    if (prefix !== undefined) {
      this.#buf.set(prefix);
      this.#end = prefix.length;
    }
  }

  /**
   * Buffers at least `n` bytes, or all bytes before the end of input if there
   * are fewer, and returns a view of every buffered byte without consuming
   * any. The view is valid until the next call on this reader.
   *
   * @example Look at the first bytes of a connection
   * ```ts ignore
   * const reader = new FrameReader(conn);
   * const start = await reader.peek(4);
   * if (start.length < 4) throw new ProtocolError("Connection ended before the greeting");
   * ```
   *
   * @param n Number of bytes wanted, at most `bufferSize`.
   * @returns A view of all buffered bytes: at least `n` unless input ended.
   * @throws {RangeError} If `n` is not an integer from 0 to `bufferSize`.
   */
  async peek(n: number): Promise<Uint8Array<ArrayBuffer>> {
    this.#checkCount(n);
    await this.#ensure(n);
    return this.#buf.subarray(this.#start, this.#end);
  }

  /**
   * Consumes exactly `n` raw bytes and returns a copy of them. Inside a
   * payload, the bytes count as part of it.
   *
   * @param n Number of bytes, at most `bufferSize` and, inside a payload, at
   * most what is left of it.
   * @returns A new array of `n` bytes.
   * @throws {ConnectionClosedError} If input ends before `n` bytes.
   * @throws {RangeError} If `n` is out of range.
   */
  async readExact(n: number): Promise<Uint8Array<ArrayBuffer>> {
    this.#checkCount(n);
    if (this.#remaining > 0 && n > this.#remaining) {
      throw new RangeError(
        `Cannot read ${n} bytes: only ${this.#remaining} remain in the current payload`,
      );
    }
    const got = await this.#ensure(n);
    if (got < n) {
      throw new ConnectionClosedError(
        `Connection closed after ${got} of ${n} expected bytes`,
      );
    }
    const start = this.#start;
    this.#start = start + n;
    if (this.#remaining > 0) this.#remaining -= n;
    return this.#buf.slice(start, start + n);
  }

  /**
   * Reads the next frame header. Its payload must then be consumed before the
   * next header.
   *
   * @returns The header, or null if input ended cleanly between frames.
   * @throws {ProtocolError} If input ends inside the header, or the type is 0.
   * @throws {FrameTooLargeError} If the length exceeds `maxFrameSize`.
   * @throws {TypeError} If the previous payload was not fully consumed.
   */
  async readHeader(): Promise<FrameHeader | null> {
    if (this.#remaining > 0) {
      throw new TypeError(
        `Cannot read frame header: ${this.#remaining} bytes of the previous payload are unconsumed`,
      );
    }
    let buffered = this.#end - this.#start;
    if (buffered < HEADER_SIZE) {
      buffered = await this.#ensure(HEADER_SIZE);
      if (buffered === 0) return null;
      if (buffered < HEADER_SIZE) {
        throw truncatedFrameError(buffered, HEADER_SIZE);
      }
    }
    const header = decodeHeaderAt(this.#buf, this.#start, this.#maxFrameSize);
    this.#start += HEADER_SIZE;
    this.#remaining = header.length;
    return header;
  }

  /**
   * Reads the rest of the current payload into one new array.
   *
   * @returns The remaining payload bytes (empty if none remain).
   * @throws {ConnectionClosedError} If input ends inside the payload.
   */
  async readPayload(): Promise<Uint8Array<ArrayBuffer>> {
    const remaining = this.#remaining;
    if (this.#end - this.#start >= remaining) {
      const start = this.#start;
      this.#start = start + remaining;
      this.#remaining = 0;
      return this.#buf.slice(start, start + remaining);
    }
    const payload = new Uint8Array(remaining);
    let filled = 0;
    for (let part; (part = await this.readFragment()) !== null;) {
      payload.set(part, filled);
      filled += part.length;
    }
    return payload;
  }

  /**
   * Returns the next piece of the current payload as a view into the internal
   * buffer, without copying. The view is valid only until the next call on
   * this reader. Pieces are never reassembled: each is what one read
   * delivered, at most `bufferSize` bytes.
   *
   * @example Copy a payload to a writer piece by piece
   * ```ts ignore
   * const header = await reader.readHeader();
   * for (let part; (part = await reader.readFragment()) !== null;) {
   *   await conn.write(part);
   * }
   * ```
   *
   * @returns The next piece, or null once the payload is complete.
   * @throws {ConnectionClosedError} If input ends inside the payload.
   */
  async readFragment(): Promise<Uint8Array<ArrayBuffer> | null> {
    const remaining = this.#remaining;
    if (remaining === 0) return null;
    const buf = this.#buf;
    let start = this.#start;
    let available = this.#end - start;
    if (available === 0) {
      // Used up: read straight into the start of the buffer, which is aligned.
      this.#start = 0;
      this.#end = 0;
      let n = this.#eof ? null : await this.#source.read(buf);
      if (n === 0) n = await this.#retryEmptyRead(buf);
      if (n === null) {
        this.#eof = true;
        throw new ConnectionClosedError("Connection closed inside a frame");
      }
      this.#end = n;
      start = 0;
      available = n;
    }
    const size = available < remaining ? available : remaining;
    this.#start = start + size;
    this.#remaining = remaining - size;
    return buf.subarray(start, start + size);
  }

  /**
   * Discards the rest of the current payload.
   *
   * @throws {ConnectionClosedError} If input ends inside the payload.
   */
  async skipPayload(): Promise<void> {
    while (await this.readFragment() !== null) {
      // Discard.
    }
  }

  /**
   * Reads the next whole frame: {@linkcode FrameReader.prototype.readHeader}
   * then {@linkcode FrameReader.prototype.readPayload}.
   *
   * @returns The frame, or null if input ended cleanly between frames.
   * @throws {ProtocolError} If input ends inside the header, or the type is 0.
   * @throws {FrameTooLargeError} If the length exceeds `maxFrameSize`.
   * @throws {ConnectionClosedError} If input ends inside the payload.
   * @throws {TypeError} If the previous payload was not fully consumed.
   */
  async readFrame(): Promise<Frame | null> {
    const header = await this.readHeader();
    if (header === null) return null;
    return { type: header.type, payload: await this.readPayload() };
  }

  /**
   * Removes the buffered but unconsumed bytes and returns a copy of them, to
   * hand the connection over to another parser. Call it between frames.
   *
   * @returns A new array with the buffered bytes (possibly empty).
   * @throws {TypeError} If a payload is partly consumed.
   */
  takeBuffered(): Uint8Array<ArrayBuffer> {
    if (this.#remaining > 0) {
      throw new TypeError(
        `Cannot take buffered bytes: ${this.#remaining} bytes of the current payload are unconsumed`,
      );
    }
    const bytes = this.#buf.slice(this.#start, this.#end);
    this.#start = 0;
    this.#end = 0;
    return bytes;
  }

  #checkCount(n: number) {
    if (!Number.isInteger(n) || n < 0 || n > this.#buf.length) {
      throw new RangeError(
        `Cannot read ${n} bytes: not an integer from 0 to bufferSize ${this.#buf.length}`,
      );
    }
  }

  /** Reads until `n` bytes are buffered or input ends; returns the count. */
  async #ensure(n: number): Promise<number> {
    while (this.#end - this.#start < n && !this.#eof) {
      this.#makeRoom(n);
      const end = this.#end;
      const dest = end === 0 ? this.#buf : this.#buf.subarray(end);
      let got = await this.#source.read(dest);
      if (got === 0) got = await this.#retryEmptyRead(dest);
      if (got === null) {
        this.#eof = true;
      } else {
        this.#end = end + got;
      }
    }
    return this.#end - this.#start;
  }

  /**
   * Moves the buffered bytes so that `n` bytes fit from their start and the
   * next read lands on an aligned position, where the buffer allows.
   */
  #makeRoom(n: number) {
    const start = this.#start;
    const end = this.#end;
    const length = end - start;
    if (length === 0) {
      this.#start = 0;
      this.#end = 0;
      return;
    }
    const size = this.#buf.length;
    if (end % READ_ALIGNMENT === 0 && start + n <= size) return;
    let to = Math.ceil(length / READ_ALIGNMENT) * READ_ALIGNMENT - length;
    if (to + n > size) to = 0;
    if (to !== start) {
      this.#buf.copyWithin(to, start, end);
      this.#start = to;
      this.#end = to + length;
    }
  }

  async #retryEmptyRead(dest: Uint8Array): Promise<number | null> {
    for (let i = 1; i < MAX_EMPTY_READS; i++) {
      const n = await this.#source.read(dest);
      if (n !== 0) return n;
    }
    throw new TypeError(
      `Cannot read from source: read() returned 0 bytes ${MAX_EMPTY_READS} times in a row`,
    );
  }
}

/** Validates a `maxFrameSize` option and applies the default. */
function checkMaxFrameSize(value: number | undefined): number {
  if (value === undefined) return DEFAULT_MAX_FRAME_SIZE;
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(
      `Invalid maxFrameSize: ${value} is not a non-negative integer`,
    );
  }
  return value;
}

/** Decodes the header at `bytes[offset..offset + 5)`; the caller checked the length. */
function decodeHeaderAt(
  bytes: Uint8Array,
  offset: number,
  maxFrameSize: number,
): FrameHeader {
  const type = bytes[offset]!;
  if (type === 0) {
    throw new ProtocolError("Cannot decode frame: type 0 is not a valid type");
  }
  const length = bytes[offset + 1]! * 0x100_0000 +
    (bytes[offset + 2]! << 16 | bytes[offset + 3]! << 8 | bytes[offset + 4]!);
  if (length > maxFrameSize) {
    throw new FrameTooLargeError(length, maxFrameSize);
  }
  return { type, length };
}

/** The error for input that ends inside a frame. */
function truncatedFrameError(got: number, total: number): ProtocolError {
  return new ProtocolError(
    `Cannot decode frame: stream ended inside a frame (${got} of ${total} bytes)`,
  );
}
