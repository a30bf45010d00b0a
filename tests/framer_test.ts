import { test } from "node:test";
import assert from "node:assert/strict";
import {
  ConnectionClosedError,
  FrameTooLargeError,
  ProtocolError,
} from "../lib/errors.ts";
import {
  decodeHeader,
  DEFAULT_MAX_FRAME_SIZE,
  encodeFrame,
  encodeHeader,
  type Frame,
  FrameDecoderStream,
  FrameEncoderStream,
  FrameReader,
  HEADER_SIZE,
} from "../lib/framer.ts";
import {
  collect,
  concatBytes,
  everySplit,
  fakeByteSource,
  seededRandom,
  splitEvery,
  testTransformStream,
} from "./_test_utils.ts";

const MAX_U32 = 0xffff_ffff;

function bytes(...values: number[]): Uint8Array {
  return new Uint8Array(values);
}

function filled(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

function wireOf(frames: readonly Frame[]): Uint8Array {
  return concatBytes(frames.map(encodeFrame));
}

/** Valid inputs: frames, the limit they are decoded under, and reader buffer sizes. */
const VALID_CASES: { name: string; frames: Frame[]; maxFrameSize?: number }[] =
  [
    { name: "one empty frame", frames: [{ type: 1, payload: bytes() }] },
    { name: "one 1-byte frame", frames: [{ type: 2, payload: bytes(0xab) }] },
    {
      name: "three frames with an empty one between",
      frames: [
        { type: 255, payload: filled(7) },
        { type: 3, payload: bytes() },
        { type: 1, payload: bytes(0, 0, 0, 0, 5) },
      ],
    },
    {
      name: "a frame of exactly maxFrameSize",
      frames: [{ type: 9, payload: filled(16) }, {
        type: 9,
        payload: bytes(1),
      }],
      maxFrameSize: 16,
    },
    {
      name: "maxFrameSize 0 with empty frames",
      frames: [{ type: 4, payload: bytes() }, { type: 5, payload: bytes() }],
      maxFrameSize: 0,
    },
  ];

/** Invalid inputs; `readerError` is what FrameReader throws when it differs from the stream. */
const INVALID_CASES: {
  name: string;
  wire: Uint8Array;
  maxFrameSize?: number;
  error: new (...args: never[]) => Error;
  message: string;
  readerError?: new (...args: never[]) => Error;
  readerMessage?: string;
}[] = [
  {
    name: "type 0",
    wire: bytes(0, 0, 0, 0, 1, 7),
    error: ProtocolError,
    message: "Cannot decode frame: type 0 is not a valid type",
  },
  {
    name: "type 0 after a valid frame",
    wire: bytes(1, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    error: ProtocolError,
    message: "Cannot decode frame: type 0 is not a valid type",
  },
  {
    name: "length maxFrameSize + 1",
    wire: concatBytes([encodeHeader(1, 17), filled(17)]),
    maxFrameSize: 16,
    error: FrameTooLargeError,
    message: "Cannot decode frame: length 17 exceeds maxFrameSize 16",
  },
  {
    name: "length 2^32 - 1 under the default limit",
    wire: encodeHeader(1, MAX_U32),
    error: FrameTooLargeError,
    message:
      "Cannot decode frame: length 4294967295 exceeds maxFrameSize 1048576",
  },
  {
    name: "a single byte",
    wire: bytes(1),
    error: ProtocolError,
    message: "Cannot decode frame: stream ended inside a frame (1 of 5 bytes)",
  },
  {
    name: "a truncated header",
    wire: bytes(1, 0, 0),
    error: ProtocolError,
    message: "Cannot decode frame: stream ended inside a frame (3 of 5 bytes)",
  },
  {
    name: "a truncated header after a valid frame",
    wire: bytes(1, 0, 0, 0, 1, 9, 2, 0, 0, 0),
    error: ProtocolError,
    message: "Cannot decode frame: stream ended inside a frame (4 of 5 bytes)",
  },
  {
    name: "a truncated payload",
    wire: bytes(1, 0, 0, 0, 4, 1, 2),
    error: ProtocolError,
    message: "Cannot decode frame: stream ended inside a frame (7 of 9 bytes)",
    readerError: ConnectionClosedError,
    readerMessage: "Connection closed inside a frame",
  },
  {
    name: "a header without its payload",
    wire: bytes(1, 0, 0, 0, 4),
    error: ProtocolError,
    message: "Cannot decode frame: stream ended inside a frame (5 of 9 bytes)",
    readerError: ConnectionClosedError,
    readerMessage: "Connection closed inside a frame",
  },
];

function assertErrorLike(
  error: unknown,
  type: new (...args: never[]) => Error,
  message: string,
  context: string,
) {
  assert.ok(error instanceof type, `${context}: got ${String(error)}`);
  assert.equal(error.message, message, context);
}

async function readAllFrames(reader: FrameReader): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (let i = 0; i < 10_000; i++) {
    const frame = await reader.readFrame();
    if (frame === null) return frames;
    frames.push(frame);
  }
  throw new Error("Too many frames");
}

async function readAllByFragments(reader: FrameReader): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (let i = 0; i < 10_000; i++) {
    const header = await reader.readHeader();
    if (header === null) return frames;
    const parts: Uint8Array[] = [];
    for (let part; (part = await reader.readFragment()) !== null;) {
      assert.ok(part.length > 0, "empty fragment");
      parts.push(part.slice());
    }
    const payload = concatBytes(parts);
    assert.equal(payload.length, header.length);
    frames.push({ type: header.type, payload });
  }
  throw new Error("Too many frames");
}

// --- codec -----------------------------------------------------------------

const HEADER_CASES = [
  { type: 1, length: 0, wire: bytes(1, 0, 0, 0, 0) },
  { type: 2, length: 258, wire: bytes(2, 0, 0, 1, 2) },
  { type: 9, length: 0x01020304, wire: bytes(9, 1, 2, 3, 4) },
  { type: 255, length: MAX_U32, wire: bytes(255, 255, 255, 255, 255) },
];

test("encodeHeader writes the type and a big-endian length", () => {
  for (const { type, length, wire } of HEADER_CASES) {
    assert.deepEqual(encodeHeader(type, length), wire, `${type}/${length}`);
  }
});

test("encodeHeader writes into target at offset and returns target", () => {
  const target = new Uint8Array(8).fill(0xee);
  const result = encodeHeader(2, 258, target, 2);
  assert.equal(result, target);
  assert.deepEqual(target, bytes(0xee, 0xee, 2, 0, 0, 1, 2, 0xee));
});

test("encodeHeader rejects out-of-range arguments", () => {
  const cases: [string, () => unknown][] = [
    ["type 0", () => encodeHeader(0, 1)],
    ["type 256", () => encodeHeader(256, 1)],
    ["type 1.5", () => encodeHeader(1.5, 1)],
    ["type NaN", () => encodeHeader(NaN, 1)],
    ["length -1", () => encodeHeader(1, -1)],
    ["length 2^32", () => encodeHeader(1, MAX_U32 + 1)],
    ["length 0.5", () => encodeHeader(1, 0.5)],
    ["short target", () => encodeHeader(1, 1, new Uint8Array(4))],
    ["offset past end", () => encodeHeader(1, 1, new Uint8Array(8), 4)],
    ["negative offset", () => encodeHeader(1, 1, new Uint8Array(8), -1)],
  ];
  for (const [name, fn] of cases) assert.throws(fn, RangeError, name);
});

test("encodeFrame puts the header before the payload in one array", () => {
  assert.deepEqual(
    encodeFrame({ type: 3, payload: bytes(104, 105) }),
    bytes(3, 0, 0, 0, 2, 104, 105),
  );
  assert.deepEqual(
    encodeFrame({ type: 1, payload: bytes() }),
    bytes(1, 0, 0, 0, 0),
  );
});

test("encodeFrame rejects type 0", () => {
  assert.throws(() => encodeFrame({ type: 0, payload: bytes(1) }), RangeError);
});

test("decodeHeader reads what encodeHeader wrote", () => {
  for (const { type, length, wire } of HEADER_CASES) {
    assert.deepEqual(
      decodeHeader(concatBytes([wire, bytes(7, 7)]), { maxFrameSize: MAX_U32 }),
      { type, length },
    );
  }
});

test("decodeHeader accepts a length of exactly maxFrameSize", () => {
  assert.deepEqual(decodeHeader(encodeHeader(1, DEFAULT_MAX_FRAME_SIZE)), {
    type: 1,
    length: DEFAULT_MAX_FRAME_SIZE,
  });
  assert.deepEqual(decodeHeader(encodeHeader(1, 0), { maxFrameSize: 0 }), {
    type: 1,
    length: 0,
  });
});

test("decodeHeader throws FrameTooLargeError with size and limit", () => {
  const cases = [
    {
      length: DEFAULT_MAX_FRAME_SIZE + 1,
      maxFrameSize: undefined,
      limit: DEFAULT_MAX_FRAME_SIZE,
    },
    { length: MAX_U32, maxFrameSize: undefined, limit: DEFAULT_MAX_FRAME_SIZE },
    { length: 1, maxFrameSize: 0, limit: 0 },
    { length: MAX_U32, maxFrameSize: MAX_U32 - 1, limit: MAX_U32 - 1 },
  ];
  for (const { length, maxFrameSize, limit } of cases) {
    const header = encodeHeader(1, length);
    const options = maxFrameSize === undefined ? undefined : { maxFrameSize };
    assert.throws(() => decodeHeader(header, options), (error) => {
      assert.ok(error instanceof FrameTooLargeError);
      assert.ok(error instanceof RangeError);
      assert.equal(error.size, length);
      assert.equal(error.limit, limit);
      assert.equal(error.code, "ERR_FRAME_TOO_LARGE");
      assert.equal(
        error.message,
        `Cannot decode frame: length ${length} exceeds maxFrameSize ${limit}`,
      );
      return true;
    });
  }
});

test("decodeHeader rejects type 0 with ProtocolError", () => {
  assert.throws(() => decodeHeader(bytes(0, 0, 0, 0, 1)), (error) => {
    assertErrorLike(
      error,
      ProtocolError,
      "Cannot decode frame: type 0 is not a valid type",
      "type 0",
    );
    return true;
  });
});

test("decodeHeader rejects short input and a bad maxFrameSize", () => {
  assert.throws(() => decodeHeader(bytes(1, 0, 0, 0)), RangeError);
  assert.throws(
    () => decodeHeader(bytes(1, 0, 0, 0, 0), { maxFrameSize: -1 }),
    RangeError,
  );
  assert.throws(
    () => decodeHeader(bytes(1, 0, 0, 0, 0), { maxFrameSize: 1.5 }),
    RangeError,
  );
});

// --- streams ---------------------------------------------------------------

for (const { name, frames, maxFrameSize } of VALID_CASES) {
  test(`FrameDecoderStream decodes ${name} split at every byte`, async () => {
    const options = maxFrameSize === undefined ? {} : { maxFrameSize };
    for (const { label, chunks } of everySplit(wireOf(frames))) {
      const decoded = await collect(new FrameDecoderStream(options), chunks);
      assert.deepEqual(decoded, frames, label);
    }
  });
}

for (const c of INVALID_CASES) {
  test(`FrameDecoderStream rejects ${c.name} split at every byte`, async () => {
    const options = c.maxFrameSize === undefined
      ? {}
      : { maxFrameSize: c.maxFrameSize };
    for (const { label, chunks } of everySplit(c.wire)) {
      await assert.rejects(
        collect(new FrameDecoderStream(options), chunks),
        (error) => {
          assertErrorLike(error, c.error, c.message, label);
          return true;
        },
      );
    }
  });
}

test("FrameDecoderStream decodes multiple frames from one chunk", async () => {
  const frames = [
    { type: 1, payload: bytes(1, 2, 3) },
    { type: 2, payload: bytes() },
    { type: 3, payload: filled(300) },
  ];
  await testTransformStream(new FrameDecoderStream(), [wireOf(frames)], frames);
});

test("FrameDecoderStream passes an unsplit payload as a view of the input chunk", async () => {
  const wire = wireOf([{ type: 1, payload: bytes(1, 2) }, {
    type: 2,
    payload: bytes(3),
  }]);
  const [first, second] = await collect(new FrameDecoderStream(), [wire]);
  assert.equal(first?.payload.buffer, wire.buffer);
  assert.equal(first?.payload.byteOffset, HEADER_SIZE);
  assert.equal(second?.payload.buffer, wire.buffer);
});

test("FrameDecoderStream accepts a payload of exactly the default limit", async () => {
  const frames = [{ type: 7, payload: filled(DEFAULT_MAX_FRAME_SIZE) }];
  const wire = wireOf(frames);
  assert.deepEqual(await collect(new FrameDecoderStream(), [wire]), frames);
  assert.deepEqual(
    await collect(new FrameDecoderStream(), splitEvery(wire, 65_536)),
    frames,
  );
});

test("FrameDecoderStream rejects an oversize header before its payload arrives", async () => {
  const decoder = new FrameDecoderStream();
  const writer = decoder.writable.getWriter();
  // The writable side is never closed: the error must come from the header alone.
  writer.write(encodeHeader(1, MAX_U32)).catch(() => {});
  await assert.rejects(decoder.readable.getReader().read(), (error) => {
    assert.ok(error instanceof FrameTooLargeError);
    assert.equal(error.size, MAX_U32);
    assert.equal(error.limit, DEFAULT_MAX_FRAME_SIZE);
    return true;
  });
});

test("FrameDecoderStream rejects a bad maxFrameSize", () => {
  assert.throws(() => new FrameDecoderStream({ maxFrameSize: -1 }), RangeError);
});

test("FrameEncoderStream emits one encoded chunk per frame", async () => {
  const frames = [{ type: 1, payload: bytes(42) }, {
    type: 200,
    payload: bytes(),
  }];
  await testTransformStream(
    new FrameEncoderStream(),
    frames,
    frames.map(encodeFrame),
  );
});

test("FrameEncoderStream errors on an invalid frame type", async () => {
  await assert.rejects(
    collect(new FrameEncoderStream(), [{ type: 0, payload: bytes() }]),
    RangeError,
  );
});

test("FrameEncoderStream and FrameDecoderStream round-trip random frames", async () => {
  for (const seed of [1, 2, 3]) {
    const random = seededRandom(seed);
    const frames: Frame[] = [];
    for (let i = 0; i < 200; i++) {
      const length = random(4) === 0 ? random(4) : random(3000);
      const payload = new Uint8Array(length);
      for (let j = 0; j < length; j++) payload[j] = random(256);
      frames.push({ type: 1 + random(255), payload });
    }
    const encoded = await collect(new FrameEncoderStream(), frames);
    // Re-chunk at random boundaries that ignore frame edges.
    const wire = concatBytes(encoded);
    const chunks: Uint8Array[] = [];
    for (let at = 0; at < wire.length;) {
      const size = 1 + random(random(2) === 0 ? 16 : 8192);
      chunks.push(wire.subarray(at, at + size));
      at += size;
    }
    const decoded = await collect(new FrameDecoderStream(), chunks);
    assert.deepEqual(decoded, frames, `seed ${seed}`);
  }
});

// --- FrameReader -------------------------------------------------------------

for (const { name, frames, maxFrameSize } of VALID_CASES) {
  test(`FrameReader decodes ${name} split at every byte`, async () => {
    const wire = wireOf(frames);
    for (const bufferSize of [undefined, 8, 64]) {
      const options = {
        ...(maxFrameSize === undefined ? {} : { maxFrameSize }),
        ...(bufferSize === undefined ? {} : { bufferSize }),
      };
      for (const { label, chunks } of everySplit(wire)) {
        const context = `${label}, bufferSize ${bufferSize}`;
        const whole = new FrameReader(fakeByteSource(chunks), options);
        assert.deepEqual(
          await readAllFrames(whole),
          frames,
          `readFrame, ${context}`,
        );
        const pieces = new FrameReader(fakeByteSource(chunks), options);
        assert.deepEqual(
          await readAllByFragments(pieces),
          frames,
          `readFragment, ${context}`,
        );
      }
    }
  });
}

for (const c of INVALID_CASES) {
  test(`FrameReader rejects ${c.name} split at every byte`, async () => {
    const error = c.readerError ?? c.error;
    const message = c.readerMessage ?? c.message;
    const options = c.maxFrameSize === undefined
      ? {}
      : { maxFrameSize: c.maxFrameSize };
    for (const { label, chunks } of everySplit(c.wire)) {
      const whole = new FrameReader(fakeByteSource(chunks), options);
      await assert.rejects(readAllFrames(whole), (e) => {
        assertErrorLike(e, error, message, `readFrame, ${label}`);
        return true;
      });
      const pieces = new FrameReader(fakeByteSource(chunks), options);
      await assert.rejects(readAllByFragments(pieces), (e) => {
        assertErrorLike(e, error, message, `readFragment, ${label}`);
        return true;
      });
    }
  });
}

test("FrameReader rejects length 2^32 - 1 from the header alone", async () => {
  // The source holds only the header; a reader that tried to read or buffer
  // the payload first would see EOF and throw something else.
  const source = fakeByteSource([encodeHeader(1, MAX_U32)]);
  const reader = new FrameReader(source, { bufferSize: 64 });
  await assert.rejects(reader.readHeader(), (error) => {
    assert.ok(error instanceof FrameTooLargeError);
    assert.equal(error.size, MAX_U32);
    assert.equal(error.limit, DEFAULT_MAX_FRAME_SIZE);
    assert.equal(error.code, "ERR_FRAME_TOO_LARGE");
    return true;
  });
  assert.equal(source.reads, 1);
});

test("FrameReader accepts exactly the default limit and rejects one byte more", async () => {
  const payload = filled(DEFAULT_MAX_FRAME_SIZE);
  const wire = concatBytes([
    encodeFrame({ type: 1, payload }),
    encodeHeader(2, DEFAULT_MAX_FRAME_SIZE + 1),
  ]);
  const reader = new FrameReader(fakeByteSource(splitEvery(wire, 65_536)));
  assert.deepEqual(await reader.readFrame(), { type: 1, payload });
  await assert.rejects(reader.readFrame(), (error) => {
    assert.ok(error instanceof FrameTooLargeError);
    assert.equal(error.size, DEFAULT_MAX_FRAME_SIZE + 1);
    assert.equal(error.limit, DEFAULT_MAX_FRAME_SIZE);
    return true;
  });
});

test("FrameReader.readFragment passes a payload larger than bufferSize through as views", async () => {
  const bufferSize = 64;
  const payload = filled(1000, 5);
  const wire = wireOf([{ type: 1, payload }, { type: 2, payload: bytes(9) }]);
  for (const chunkSize of [wire.length, 100, 64, 37, 1]) {
    const reader = new FrameReader(
      fakeByteSource(splitEvery(wire, chunkSize)),
      {
        bufferSize,
        maxFrameSize: 4096,
      },
    );
    assert.deepEqual(await reader.readHeader(), { type: 1, length: 1000 });
    const parts: Uint8Array[] = [];
    let buffer: ArrayBufferLike | undefined;
    for (let part; (part = await reader.readFragment()) !== null;) {
      assert.ok(
        part.length > 0 && part.length <= bufferSize,
        `fragment of ${part.length}`,
      );
      buffer ??= part.buffer;
      assert.equal(
        part.buffer,
        buffer,
        "every fragment is a view of one buffer",
      );
      assert.equal(part.buffer.byteLength, bufferSize);
      parts.push(part.slice());
    }
    assert.deepEqual(concatBytes(parts), payload, `chunks of ${chunkSize}`);
    assert.equal(await reader.readFragment(), null);
    assert.deepEqual(await reader.readFrame(), { type: 2, payload: bytes(9) });
    assert.equal(await reader.readFrame(), null);
  }
});

test("FrameReader reads the source only at 64-byte aligned positions", async () => {
  const random = seededRandom(7);
  const frames: Frame[] = [];
  for (let i = 0; i < 100; i++) {
    frames.push({ type: 1 + random(255), payload: filled(random(700), i) });
  }
  const wire = wireOf(frames);
  for (const chunkSize of [1, 3, 37, 100, 1000]) {
    for (const mode of ["readFrame", "readFragment"] as const) {
      const source = fakeByteSource(splitEvery(wire, chunkSize));
      const reader = new FrameReader(source, { bufferSize: 1024 });
      const read = mode === "readFrame" ? readAllFrames : readAllByFragments;
      assert.deepEqual(
        await read(reader),
        frames,
        `${mode}, chunks of ${chunkSize}`,
      );
      const unaligned = source.offsets.filter((offset) => offset % 64 !== 0);
      assert.deepEqual(unaligned, [], `${mode}, chunks of ${chunkSize}`);
    }
  }
});

test("FrameReader.readFragment reads into the whole buffer once it is used up", async () => {
  const payload = filled(5000);
  const source = fakeByteSource(
    splitEvery(wireOf([{ type: 1, payload }]), 300),
  );
  const reader = new FrameReader(source, { bufferSize: 1024 });
  await reader.readHeader();
  await reader.skipPayload();
  assert.ok(source.reads > 10);
  assert.deepEqual(new Set(source.offsets), new Set([0]));
  assert.deepEqual(new Set(source.sizes), new Set([1024]));
});

test("FrameReader.readHeader throws while the previous payload is unconsumed", async () => {
  const wire = wireOf([{ type: 1, payload: filled(10) }, {
    type: 2,
    payload: bytes(1),
  }]);
  const reader = new FrameReader(fakeByteSource([wire]), { bufferSize: 64 });
  await reader.readHeader();
  await assert.rejects(reader.readHeader(), TypeError);
  await assert.rejects(reader.readFrame(), TypeError);
  const first = await reader.readFragment();
  assert.equal(first?.length, 10);
  assert.deepEqual(await reader.readFrame(), { type: 2, payload: bytes(1) });
});

test("FrameReader.readHeader returns null at a clean end, repeatedly", async () => {
  const reader = new FrameReader(
    fakeByteSource([encodeFrame({ type: 1, payload: bytes(1) })]),
  );
  assert.deepEqual(await reader.readFrame(), { type: 1, payload: bytes(1) });
  assert.equal(await reader.readHeader(), null);
  assert.equal(await reader.readHeader(), null);
  assert.equal(await reader.readFrame(), null);
  assert.equal(await reader.readFragment(), null);
});

test("FrameReader.skipPayload discards the rest of the payload", async () => {
  const wire = wireOf([{ type: 1, payload: filled(500) }, {
    type: 2,
    payload: bytes(3),
  }]);
  const reader = new FrameReader(fakeByteSource(splitEvery(wire, 50)), {
    bufferSize: 64,
  });
  await reader.readHeader();
  await reader.readFragment();
  await reader.skipPayload();
  assert.deepEqual(await reader.readFrame(), { type: 2, payload: bytes(3) });
});

test("FrameReader.readPayload returns the rest after readFragment", async () => {
  const payload = filled(500);
  const reader = new FrameReader(
    fakeByteSource(splitEvery(wireOf([{ type: 1, payload }]), 50)),
    {
      bufferSize: 64,
    },
  );
  await reader.readHeader();
  const first = (await reader.readFragment())!.slice();
  const rest = await reader.readPayload();
  assert.deepEqual(concatBytes([first, rest]), payload);
  assert.deepEqual(await reader.readPayload(), bytes());
});

test("FrameReader.peek buffers at least n bytes without consuming them", async () => {
  const source = fakeByteSource([bytes(1, 2, 3), bytes(4, 5, 6, 7), bytes(8)]);
  const reader = new FrameReader(source, { bufferSize: 16 });
  assert.deepEqual(await reader.peek(5), bytes(1, 2, 3, 4, 5, 6, 7));
  assert.equal(source.reads, 2);
  assert.deepEqual(await reader.peek(2), bytes(1, 2, 3, 4, 5, 6, 7));
  assert.equal(source.reads, 2, "no read when enough is buffered");
  assert.deepEqual(await reader.readExact(2), bytes(1, 2));
  assert.deepEqual(await reader.peek(0), bytes(3, 4, 5, 6, 7));
  // Fewer bytes than asked for when input ends first.
  assert.deepEqual(await reader.peek(10), bytes(3, 4, 5, 6, 7, 8));
  assert.deepEqual(await reader.peek(16), bytes(3, 4, 5, 6, 7, 8));
  await assert.rejects(reader.peek(17), RangeError);
  await assert.rejects(reader.peek(-1), RangeError);
});

test("FrameReader.peek can fill the whole buffer after compacting", async () => {
  const data = filled(40);
  const reader = new FrameReader(fakeByteSource(splitEvery(data, 7)), {
    bufferSize: 16,
  });
  assert.deepEqual(await reader.readExact(10), data.subarray(0, 10));
  assert.deepEqual(await reader.peek(16), data.subarray(10, 26));
  assert.deepEqual(await reader.readExact(16), data.subarray(10, 26));
  assert.deepEqual(await reader.readExact(14), data.subarray(26, 40));
  await assert.rejects(reader.readExact(1), ConnectionClosedError);
});

test("FrameReader.readExact returns a copy of exactly n bytes", async () => {
  const reader = new FrameReader(
    fakeByteSource([bytes(1, 2), bytes(3, 4, 5)]),
    { bufferSize: 8 },
  );
  const three = await reader.readExact(3);
  assert.deepEqual(three, bytes(1, 2, 3));
  const peeked = await reader.peek(0);
  three.fill(0);
  assert.deepEqual(peeked, bytes(4, 5), "the copy does not alias the buffer");
  await assert.rejects(reader.readExact(3), (error) => {
    assertErrorLike(
      error,
      ConnectionClosedError,
      "Connection closed after 2 of 3 expected bytes",
      "eof",
    );
    return true;
  });
  await assert.rejects(reader.readExact(9), RangeError);
});

test("FrameReader.readExact inside a payload counts against it", async () => {
  const payload = bytes(0, 0, 0, 9, 1, 2, 3);
  const wire = wireOf([{ type: 1, payload }, { type: 2, payload: bytes() }]);
  const reader = new FrameReader(fakeByteSource(splitEvery(wire, 3)), {
    bufferSize: 16,
  });
  await reader.readHeader();
  await assert.rejects(reader.readExact(8), RangeError);
  assert.deepEqual(await reader.readExact(4), bytes(0, 0, 0, 9));
  assert.deepEqual(await reader.readPayload(), bytes(1, 2, 3));
  assert.deepEqual(await reader.readFrame(), { type: 2, payload: bytes() });
});

test("FrameReader.takeBuffered hands over the unconsumed bytes", async () => {
  const frame = encodeFrame({ type: 1, payload: bytes(7) });
  const source = fakeByteSource([
    concatBytes([frame, bytes(0x61, 0x62)]),
    bytes(0x63),
  ]);
  const reader = new FrameReader(source, { bufferSize: 64 });
  assert.deepEqual(await reader.readFrame(), { type: 1, payload: bytes(7) });
  const taken = reader.takeBuffered();
  assert.deepEqual(taken, bytes(0x61, 0x62));
  assert.equal(taken.buffer.byteLength, 2, "a copy, not a view of the buffer");
  assert.deepEqual(reader.takeBuffered(), bytes());
  assert.deepEqual(await reader.readExact(1), bytes(0x63));
});

test("FrameReader.takeBuffered throws inside a payload", async () => {
  const reader = new FrameReader(
    fakeByteSource([encodeFrame({ type: 1, payload: bytes(1, 2) })]),
  );
  await reader.readHeader();
  assert.throws(() => reader.takeBuffered(), TypeError);
});

test("FrameReader tolerates empty reads but not endless ones", async () => {
  const frame = encodeFrame({ type: 1, payload: bytes(1, 2) });
  const few = new FrameReader(
    fakeByteSource([
      bytes(),
      frame.subarray(0, 6),
      bytes(),
      bytes(),
      frame.subarray(6),
    ]),
  );
  assert.deepEqual(await few.readFrame(), { type: 1, payload: bytes(1, 2) });
  const endless = new FrameReader(
    fakeByteSource(Array.from({ length: 100 }, () => bytes())),
  );
  await assert.rejects(endless.readFrame(), TypeError);
});

test("FrameReader rejects bad options", () => {
  const source = fakeByteSource([]);
  assert.throws(() => new FrameReader(source, { bufferSize: 4 }), RangeError);
  assert.throws(
    () => new FrameReader(source, { bufferSize: 64.5 }),
    RangeError,
  );
  assert.throws(
    () => new FrameReader(source, { maxFrameSize: -1 }),
    RangeError,
  );
  assert.doesNotThrow(() =>
    new FrameReader(source, { bufferSize: HEADER_SIZE, maxFrameSize: 0 })
  );
});
