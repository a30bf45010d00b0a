import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import {
  AccessDeniedError,
  Code,
  CODES,
  errorFromFrame,
  errorFromLine,
  errorLine,
  exitStatusOf,
  FrameTooLargeError,
  INTERNAL_MESSAGE,
  isCode,
  MAX_ERROR_MESSAGE,
  MoatError,
  PathError,
  toErrorBody,
} from "../lib/errors.ts";
import { decodeError, encodeError } from "../lib/protocol.ts";
import { rawControl } from "../soak/hostile.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");

/** Every file under `dir` ending in one of `exts`, skipping dependencies. */
function filesUnder(dir: string, exts: string[]): string[] {
  const out: string[] = [];
  for (
    const entry of fs.readdirSync(path.join(ROOT, dir), {
      recursive: true,
      withFileTypes: true,
    })
  ) {
    if (!entry.isFile() || !exts.some((e) => entry.name.endsWith(e))) continue;
    const file = path.join(entry.parentPath, entry.name);
    if (!file.includes("node_modules")) out.push(file);
  }
  return out;
}

/** A hostile peer's text: screen clear, title set, BEL, CR, a CSI, RLO, LF. */
const EVIL =
  "\x1b[2J\x1b]0;owned\x07\rmoat: saved passwords.txt\x9b31m\u202e\n";

test("CODES holds every ERR_ code used in lib, main.ts, soak, bench, scripts, tests and docs", () => {
  const files = [
    ...["lib", "soak", "bench", "scripts", "tests", "cli"]
      .filter((d) => fs.existsSync(path.join(ROOT, d)))
      .flatMap((d) => filesUnder(d, [".ts"])),
    ...filesUnder("docs", [".md"]),
    path.join(ROOT, "main.ts"),
  ].filter((f) => !f.endsWith("errors_test.ts"));
  assert.ok(files.length > 50, `only ${files.length} files`);
  const used = new Set<string>();
  for (const file of files) {
    for (
      const m of fs.readFileSync(file, "utf8").matchAll(/\bERR_[A-Z0-9_]+/g)
    ) {
      // `ERR_` followed by a placeholder ("ERR_…") is no code.
      if (!m[0].endsWith("_")) used.add(m[0]);
    }
  }
  // Codes the runtimes' TLS stacks raise, which lib/net/ maps to moat's own
  // at the adapter boundary: they are read there, never sent or exited with.
  const runtime = new Set([
    "ERR_TLS_CERT_ALTNAME_INVALID",
    "ERR_SSL_WRONG_VERSION_NUMBER",
  ]);
  const missing = [...used].filter((c) => !isCode(c) && !runtime.has(c));
  assert.deepEqual(missing, []);
  assert.ok(used.size >= 40, `only ${used.size} codes found`);
});

test("Code holds each code of CODES under its own name", () => {
  assert.deepEqual(Object.keys(Code), Object.keys(CODES));
  for (const [name, value] of Object.entries(Code)) assert.equal(value, name);
  assert.ok(Object.isFrozen(Code));
});

test("docs/PROTOCOL.md lists exactly the codes of CODES, with their exit status and peer flag", () => {
  const doc = fs.readFileSync(path.join(ROOT, "docs/PROTOCOL.md"), "utf8");
  const rows = [
    ...doc.matchAll(/^\| `(ERR_[A-Z0-9_]+)` \| (\d+) \| (yes|no) \|/gm),
  ]
    .map((m) => [m[1], Number(m[2]), m[3] === "yes"]);
  assert.deepEqual(
    rows,
    Object.entries(CODES).map(([code, row]) => [code, row.exit, row.peer]),
  );
});

test("isCode takes own keys only", () => {
  assert.ok(isCode("ERR_NOT_FOUND"));
  for (const c of ["constructor", "__proto__", "toString", "ERR_", ""]) {
    assert.equal(isCode(c), false, c);
  }
});

test("MoatError takes its exit status from the table unless given one", () => {
  for (const code of Object.keys(CODES) as Code[]) {
    const err = new MoatError(code, "m");
    assert.equal(err.exitCode, CODES[code].exit, code);
    assert.equal(exitStatusOf(err), CODES[code].exit, code);
  }
  assert.equal(new MoatError(Code.ERR_IO, "m", 6).exitCode, 6);
});

test("toErrorBody, encodeError and errorFromFrame round-trip every code a peer may be sent", () => {
  for (
    const [code, row] of Object.entries(CODES) as [Code, typeof CODES[Code]][]
  ) {
    const err = new MoatError(code, `Message of ${code}`);
    const body = toErrorBody(err);
    const back = errorFromFrame(decodeError(encodeError(body)));
    if (!row.peer || code === Code.ERR_INTERNAL) {
      assert.deepEqual(body, {
        code: "ERR_INTERNAL",
        message: INTERNAL_MESSAGE,
      });
      assert.equal(back.code, Code.ERR_INTERNAL, code);
      assert.doesNotMatch(back.message, /Message of/, code);
      continue;
    }
    assert.deepEqual(body, { code, message: `Message of ${code}` });
    assert.equal(back.code, code);
    assert.equal(back.exitCode, row.exit, code);
    assert.equal(exitStatusOf(back), row.exit, code);
    if (code !== Code.ERR_ACCESS_DENIED) {
      assert.match(back.message, new RegExp(`Message of ${code}$`), code);
    }
  }
});

test("errorLine and errorFromLine round-trip every code a peer may be sent", () => {
  for (
    const [code, row] of Object.entries(CODES) as [Code, typeof CODES[Code]][]
  ) {
    const line = errorLine(new MoatError(code, `Message of ${code}`));
    assert.match(line, /^ERR [A-Z_]+ [^\n]*\n$/, code);
    const back = errorFromLine(line.slice(0, -1))!;
    if (!row.peer || code === Code.ERR_INTERNAL) {
      assert.equal(line, `ERR INTERNAL ${INTERNAL_MESSAGE}\n`);
      continue;
    }
    assert.equal(line, `ERR ${code.slice(4)} Message of ${code}\n`);
    assert.equal(back.code, code);
    assert.equal(back.exitCode, row.exit, code);
  }
  assert.equal(errorFromLine("HTTP/1.1 400 Bad Request"), undefined);
});

test("errorFromFrame gives path refusals as PathError and ACCESS_DENIED as AccessDeniedError", () => {
  const notFound = errorFromFrame({
    code: "ERR_NOT_FOUND",
    message: 'Not found: "a"',
  });
  assert.ok(notFound instanceof PathError);
  assert.equal(notFound.message, 'Not found: "a"');
  const denied = errorFromLine("ERR ACCESS_DENIED access refused by server");
  assert.ok(denied instanceof AccessDeniedError);
  assert.equal(denied.message, "Access refused by server");
  const auth = errorFromFrame({ code: "ERR_AUTH", message: "token failed" });
  assert.equal(auth.message, "Server refused: token failed");
  assert.equal(auth.exitCode, 3);
  const busy = errorFromLine("ERR BUSY server busy: too many connections");
  assert.equal(
    busy?.message,
    "Server refused: server busy: too many connections",
  );
});

test("errorFromFrame escapes a hostile message and cuts it to MAX_ERROR_MESSAGE", () => {
  for (
    const message of [
      EVIL,
      EVIL.repeat(200),
      "\u2066".repeat(10_000),
      "a".repeat(1 << 20),
      "\ud83d\ude00".repeat(600),
    ]
  ) {
    for (const code of ["ERR_NOT_FOUND", "ERR_FILE_CHANGED", "ERR_X"]) {
      const err = errorFromFrame({ code, message });
      assert.equal(rawControl(err.message), undefined, err.message);
      assert.ok(!err.message.includes("\n"));
      assert.ok(
        err.message.length <= MAX_ERROR_MESSAGE + 80,
        `${err.message.length} characters`,
      );
      // No half of a surrogate pair is left at the cut.
      assert.doesNotMatch(err.message, /[\ud800-\udbff](?![\udc00-\udfff])/);
    }
  }
  const err = errorFromFrame({ code: "ERR_NOT_FOUND", message: EVIL });
  assert.equal(
    err.message,
    "\\e[2J\\e]0;owned\\x07\\rmoat: saved passwords.txt\\x9b31m\\u{202e}\\n",
  );
});

test("errorFromFrame maps unknown codes, prototype keys and codes a peer may not send to ERR_UNKNOWN", () => {
  for (
    const code of [
      "ERR_SOMETHING_NEW",
      "constructor",
      "__proto__",
      "toString",
      "",
      "ERR_INTEGRITY",
      "ERR_USAGE",
      "ERR_EXISTS",
      "ERR_UNKNOWN",
      EVIL,
      "X".repeat(10_000),
    ]
  ) {
    const err = errorFromFrame({ code, message: "m" });
    assert.equal(err.code, Code.ERR_UNKNOWN, JSON.stringify(code));
    assert.equal(err.exitCode, 1);
    assert.equal(exitStatusOf(err), 1);
    assert.equal(rawControl(err.message), undefined, err.message);
    assert.ok(err.message.length < 200, err.message);
    assert.match(err.message, /^Server error .*: m$/s);
  }
  const line = errorFromLine(`ERR ${EVIL.replace("\n", "")} boom`);
  assert.equal(line?.code, Code.ERR_UNKNOWN);
  assert.equal(rawControl(line!.message), undefined);
});

test("toErrorBody and errorLine never carry the message of a system error or a local code", () => {
  let system: unknown;
  try {
    fs.openSync("/nonexistent-moat-dir/srv/secret.key", "r");
  } catch (err) {
    system = err;
  }
  assert.ok(system instanceof Error && /srv\/secret/.test(system.message));
  const local = [
    system,
    new MoatError(Code.ERR_IO, 'Cannot write "/srv/vault/x": EIO'),
    new MoatError(Code.ERR_CLOSED, 'Vault "/srv/vault" is closed'),
    new MoatError(Code.ERR_INTERNAL, 'Chain head of "/srv/vault/a" is at 3'),
    new MoatError(Code.ERR_CORRUPT, 'Segment "/srv/vault/a/1.seg" is damaged'),
    new Error("Cannot read /srv/vault/key"),
    new TypeError("x is /srv/vault"),
    { code: "ENOSPC", message: "no space on /srv/vault" },
    { code: 7, message: "/srv/vault" },
    "/srv/vault",
    null,
    undefined,
  ];
  for (const err of local) {
    const body = toErrorBody(err);
    assert.deepEqual(body, { code: "ERR_INTERNAL", message: INTERNAL_MESSAGE });
    assert.doesNotMatch(JSON.stringify(body), /srv/);
    assert.doesNotMatch(errorLine(err), /srv/);
  }
  // A body-shaped object with a peer code passes, like the error it stands for.
  assert.deepEqual(
    toErrorBody({ code: "ERR_NO_VAULT", message: "no vault" }),
    { code: "ERR_NO_VAULT", message: "no vault" },
  );
  assert.deepEqual(toErrorBody(new FrameTooLargeError(5000, 4096)), {
    code: "ERR_FRAME_TOO_LARGE",
    message: "Cannot decode frame: length 5000 exceeds maxFrameSize 4096",
  });
});

test("toErrorBody cuts a long message and errorLine keeps it on one line", () => {
  const err = new PathError(
    Code.ERR_BAD_PATH,
    `Invalid path: "${"a".repeat(2000)}\n\r\u2028\u202e\x1b"`,
  );
  const body = toErrorBody(err);
  assert.equal(body.message.length, MAX_ERROR_MESSAGE + 1);
  assert.ok(body.message.endsWith("…"));
  const line = errorLine(
    new PathError(Code.ERR_BAD_PATH, 'Bad "a\\u001b"\n\r\u2028\u202e\x1bz'),
  );
  assert.equal(
    line,
    'ERR BAD_PATH Bad "a\\u001b"\\n\\r\\u{2028}\\u{202e}\\ez\n',
  );
  assert.equal(rawControl(line.slice(0, -1)), undefined);
});

test("exitStatusOf reads the table for anything with a known code, 1 otherwise", () => {
  assert.equal(exitStatusOf({ code: "ERR_USAGE" }), 2);
  assert.equal(exitStatusOf(new FrameTooLargeError(2, 1)), 1);
  assert.equal(exitStatusOf(new TypeError("x")), 1);
  assert.equal(exitStatusOf({ code: "ENOENT" }), 1);
  assert.equal(exitStatusOf("boom"), 1);
  assert.equal(exitStatusOf(new AccessDeniedError()), 3);
});
