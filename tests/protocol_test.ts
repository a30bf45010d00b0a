import { test } from "node:test";
import assert from "node:assert/strict";
import {
  decodeChatLine,
  decodeError,
  decodeFileMeta,
  decodeGet,
  decodeHello,
  decodeShipBatch,
  encodeError,
  encodeJson,
  encodePreamble,
  encodeShipBatch,
  isMagicPrefix,
  MAGIC,
  MIN_MAX_FRAME_SIZE,
  PREAMBLE_SIZE,
} from "../lib/protocol.ts";
import { ProtocolError } from "../lib/errors.ts";
import { escapeText } from "../lib/text.ts";
import { formatChatLine } from "../lib/chat.ts";
import { parseServerAddr } from "../lib/client.ts";
import { AuditLog } from "../lib/audit.ts";

test("encodePreamble starts with a non-ASCII magic byte and ends with the version", () => {
  const p = encodePreamble();
  assert.equal(p.length, PREAMBLE_SIZE);
  assert.equal(p[0], 0x89);
  assert.equal(p[PREAMBLE_SIZE - 1], 1);
  assert.ok(isMagicPrefix(p.subarray(0, 3)));
  assert.ok(!isMagicPrefix(new TextEncoder().encode("FILE:x")));
  assert.ok(isMagicPrefix(MAGIC));
});

test("decodeHello accepts the three modes and rejects bad ones", () => {
  const ok = decodeHello(
    encodeJson({ client: "moat/0.1.0", mode: "get", maxFrameSize: 1024 }),
  );
  // The floor: 1024.
  assert.deepEqual(ok, {
    client: "moat/0.1.0",
    mode: "get",
    maxFrameSize: 1024,
  });
  const ship = decodeHello(
    encodeJson({
      client: "x",
      mode: "ship",
      maxFrameSize: 4096,
      source: "web",
    }),
  );
  assert.equal(ship.source, "web");
  const bad: unknown[] = [
    { client: "x", mode: "push", maxFrameSize: 1 },
    { client: "x", mode: "get", maxFrameSize: -1 },
    { client: "x", mode: "get", maxFrameSize: 1.5 },
    { client: "x", mode: "get", maxFrameSize: 1 },
    { client: "x", mode: "get", maxFrameSize: 1023 },
    { client: 7, mode: "get", maxFrameSize: 1 },
    { client: "x", mode: "ship", maxFrameSize: 4096 },
    { client: "x", mode: "ship", maxFrameSize: 4096, source: "" },
    { client: "x", mode: "ship", maxFrameSize: 4096, source: "s".repeat(129) },
    [],
    null,
  ];
  for (const b of bad) {
    assert.throws(
      () => decodeHello(encodeJson(b)),
      ProtocolError,
      JSON.stringify(b),
    );
  }
  assert.throws(
    () => decodeHello(new TextEncoder().encode("{not json")),
    ProtocolError,
  );
});

test("decodeGet, decodeFileMeta and decodeChatLine check every field", () => {
  assert.deepEqual(decodeGet(encodeJson({ path: "a", offset: 3 })), {
    path: "a",
    offset: 3,
    digest: "sha256",
  });
  assert.equal(
    decodeGet(encodeJson({ path: "a", offset: 0, digest: "crc32" })).digest,
    "crc32",
  );
  assert.throws(
    () => decodeGet(encodeJson({ path: "a", offset: 0, digest: "md5" })),
    /Unknown digest "md5"/,
  );
  assert.throws(
    () => decodeGet(encodeJson({ path: "a", offset: 0, digest: 32 })),
    ProtocolError,
  );
  assert.equal(
    decodeFileMeta(
      encodeJson({
        path: "a",
        size: 5,
        offset: 0,
        mtimeMs: 1,
        digest: "crc32",
      }),
    ).digest,
    "crc32",
  );
  assert.equal(
    decodeFileMeta(encodeJson({ path: "a", size: 5, offset: 0, mtimeMs: 1 }))
      .digest,
    "sha256",
  );
  assert.throws(
    () =>
      decodeFileMeta(
        encodeJson({ path: "a", size: 5, offset: 0, mtimeMs: 1, digest: "" }),
      ),
    ProtocolError,
  );
  assert.throws(
    () => decodeGet(encodeJson({ path: "a", offset: "3" })),
    ProtocolError,
  );
  assert.throws(
    () => decodeGet(encodeJson({ path: 1, offset: 0 })),
    ProtocolError,
  );
  assert.equal(
    decodeFileMeta(encodeJson({ path: "a", size: 5, offset: 0, mtimeMs: 1.5 }))
      .size,
    5,
  );
  assert.throws(
    () =>
      decodeFileMeta(
        encodeJson({ path: "a", size: 2 ** 60, offset: 0, mtimeMs: 0 }),
      ),
    ProtocolError,
  );
  assert.equal(
    decodeChatLine(encodeJson({ from: "c1", addr: "", text: "hi" })).text,
    "hi",
  );
  assert.throws(
    () => decodeChatLine(encodeJson({ from: "c1", text: "hi" })),
    ProtocolError,
  );
});

test("encodeShipBatch and decodeShipBatch round-trip, and truncation is refused", () => {
  const enc = new TextEncoder();
  const records = [
    { seq: 1, ts: 1700000000000, partial: false, line: enc.encode("first") },
    { seq: 2, ts: 1700000000001, partial: true, line: new Uint8Array(0) },
    {
      seq: 3,
      ts: 1700000000002,
      partial: false,
      line: Uint8Array.of(0, 255, 10, 13),
    },
  ];
  const payload = encodeShipBatch(records);
  assert.deepEqual(
    decodeShipBatch(payload).map((r) => ({ ...r, line: [...r.line] })),
    records.map((r) => ({ ...r, line: [...r.line] })),
  );
  for (let cut = 1; cut < payload.length; cut++) {
    const part = payload.subarray(0, cut);
    try {
      const got = decodeShipBatch(part);
      // A cut on a record boundary is a shorter, valid batch.
      assert.ok(got.length < records.length);
    } catch (err) {
      assert.ok(err instanceof ProtocolError, `cut ${cut}`);
    }
  }
  const bad = encodeShipBatch([{
    seq: 1,
    ts: 0,
    partial: false,
    line: new Uint8Array(0),
  }]);
  bad[16] = 7;
  assert.throws(() => decodeShipBatch(bad), ProtocolError);
  new DataView(bad.buffer).setFloat64(0, 0.5, true);
  assert.throws(() => decodeShipBatch(bad), ProtocolError);
});

test("escapeText escapes controls, backslash, bidi and zero-width marks and nothing else", () => {
  const rows: [string, string][] = [
    ["plain text é 日本", "plain text é 日本"],
    ["a\rb", "a\\rb"],
    ["a\nb", "a\\nb"],
    ["\x1b[31mred", "\\e[31mred"],
    ["bell\x07", "bell\\x07"],
    ["del\x7f", "del\\x7f"],
    ["c1\x9b", "c1\\x9b"],
    ["back\\slash", "back\\\\slash"],
    ["rtl\u202eevil", "rtl\\u{202e}evil"],
    ["zw\u200bsp", "zw\\u{200b}sp"],
    ["ls\u2028ps\u2029", "ls\\u{2028}ps\\u{2029}"],
    ["bom\ufeff", "bom\\u{feff}"],
  ];
  for (const [input, want] of rows) {
    assert.equal(escapeText(input), want, JSON.stringify(input));
  }
});

test("formatChatLine tags the sender and escapes both tag and text", () => {
  assert.equal(
    formatChatLine({ from: "c1", addr: "127.0.0.1:5", text: "hi" }),
    "[c1 127.0.0.1:5] hi",
  );
  assert.equal(
    formatChatLine({ from: "operator", addr: "", text: "x\r[c2] y" }),
    "[operator] x\\r[c2] y",
  );
  assert.equal(
    formatChatLine({ from: "c\n1", addr: "", text: "" }),
    "[c\\n1] ",
  );
});

test("parseServerAddr reads host:port, [v6]:port and bare hosts, and rejects the rest", () => {
  assert.deepEqual(parseServerAddr("127.0.0.1:4320"), {
    hostname: "127.0.0.1",
    port: 4320,
  });
  assert.deepEqual(parseServerAddr("[::1]:99"), { hostname: "::1", port: 99 });
  assert.deepEqual(parseServerAddr("[::1]"), { hostname: "::1", port: 4320 });
  assert.deepEqual(parseServerAddr("::1"), { hostname: "::1", port: 4320 });
  assert.deepEqual(parseServerAddr("loghost"), {
    hostname: "loghost",
    port: 4320,
  });
  for (
    const bad of [
      "",
      ":4320",
      "host:",
      "host:0",
      "host:65536",
      "host:12ab",
      "[::1]:x",
    ]
  ) {
    assert.throws(() => parseServerAddr(bad), /Invalid server address/, bad);
  }
});

test("AuditLog writes one JSON object per line whatever the field values", () => {
  const lines: string[] = [];
  const log = new AuditLog((l) => lines.push(l));
  log.write("chat", { text: "a\nb\r\x1b[2J\u2028", peer: "127.0.0.1:1" });
  assert.equal(lines.length, 1);
  assert.ok(!lines[0]!.includes("\n"));
  const o = JSON.parse(lines[0]!);
  assert.equal(o.event, "chat");
  assert.equal(o.text, "a\nb\r\x1b[2J\u2028");
  assert.match(o.ts, /^\d{4}-\d\d-\d\dT/);
  const failing = new AuditLog(() => {
    throw new Error("disk full");
  });
  assert.doesNotThrow(() => failing.write("x"));
});

test("encodeError fits any message into the smallest frame limit, and decodeError reads it back", () => {
  const short = encodeError({
    code: "ERR_NOT_FOUND",
    message: 'Not found: "a"',
  });
  assert.deepEqual(decodeError(short), {
    code: "ERR_NOT_FOUND",
    message: 'Not found: "a"',
  });
  for (
    const message of [
      "a".repeat(5000),
      "\x01".repeat(2000), // six bytes of JSON each
      "\u20ac".repeat(2000), // three bytes of UTF-8 each
      "\ud83d\ude00".repeat(2000),
      "a".repeat(1000) + "\x01".repeat(10),
    ]
  ) {
    const bytes = encodeError({ code: "ERR_FRAME_TOO_LARGE", message });
    assert.ok(bytes.length <= MIN_MAX_FRAME_SIZE, `${bytes.length} bytes`);
    assert.ok(bytes.length > MIN_MAX_FRAME_SIZE - 16, `${bytes.length} bytes`);
    const body = decodeError(bytes);
    assert.equal(body.code, "ERR_FRAME_TOO_LARGE");
    assert.ok(body.message.endsWith("\u2026"));
    assert.ok(message.startsWith(body.message.slice(0, -1)));
  }
  assert.throws(
    () => encodeError({ code: "X".repeat(2000), message: "" }),
    RangeError,
  );
});

test("decodeError refuses a body without a string code and message", () => {
  for (
    const bad of [
      {},
      { code: 1, message: "m" },
      { code: "NOT_FOUND" },
      { code: "NOT_FOUND", message: null },
    ]
  ) {
    assert.throws(() => decodeError(encodeJson(bad)), ProtocolError);
  }
  assert.throws(
    () => decodeError(new TextEncoder().encode("[1]")),
    ProtocolError,
  );
});
