import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import process from "node:process";
import {
  _internals,
  createJail,
  type Jail,
  MAX_PATH_BYTES,
  MAX_SEGMENT_BYTES,
  validateRequestPath,
} from "../lib/jail.ts";
import { PathError, UsageError } from "../lib/errors.ts";

// ---------------------------------------------------------------------------
// Fixture: base/root is the jail; base/outside and base/root2 hold secrets.

type Code =
  | "ERR_BAD_PATH"
  | "ERR_OUTSIDE_ROOT"
  | "ERR_NOT_FOUND"
  | "ERR_NOT_FILE"
  | "ERR_PERMISSION";

const BAD = "ERR_BAD_PATH";
const OUT = "ERR_OUTSIDE_ROOT";
const NF = "ERR_NOT_FOUND";
const NOT_FILE = "ERR_NOT_FILE";

const IS_LINUX = process.platform === "linux";
const JAIL_URL = new URL("../lib/jail.ts", import.meta.url).href;

const base = fs.realpathSync(
  fs.mkdtempSync(path.join(os.tmpdir(), "moat-jail-")),
);
const root = path.join(base, "root");
const outside = path.join(base, "outside");
const sibling = path.join(base, "root2");

function put(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
}

function link(name: string, target: string): void {
  const at = path.join(root, name);
  fs.mkdirSync(path.dirname(at), { recursive: true });
  fs.symlinkSync(target, at);
}

put(path.join(root, "a.txt"), "INSIDE:a");
put(path.join(root, "dir/b.txt"), "INSIDE:b");
put(path.join(root, "dir/sub/c.txt"), "INSIDE:c");
put(path.join(root, ".hidden"), "INSIDE:hidden");
put(path.join(root, "caf\u00e9.txt"), "INSIDE:cafe-nfc");
put(path.join(root, "\u2024\u2024"), "INSIDE:one-dot-leaders");
put(path.join(root, "a.txt:$DATA"), "INSIDE:colon");
put(path.join(outside, "secret.txt"), "OUTSIDE:secret");
put(path.join(sibling, "secret.txt"), "OUTSIDE:sibling");

link("in_link", "a.txt");
link("abs_in_link", path.join(root, "a.txt"));
link("dir_in_link", "dir");
link("chain_in1", "chain_in2");
link("chain_in2", "dir/b.txt");
link("root_link", ".");
link("up_and_back", "../root/a.txt");
link("dir/sub/up2", "../../a.txt");
link("out_link", path.join(outside, "secret.txt"));
link("out_rel_link", "../outside/secret.txt");
link("etc_link", "../../etc/passwd");
link("deep_etc_link", "../".repeat(40) + "etc/passwd");
link("chain_out1", "chain_out2");
link("chain_out2", "dir/chain_out3");
link("dir/chain_out3", "../../outside/secret.txt");
link("dir_out_link", "../outside");
link("dotdot_out_link", "dir/../../outside/secret.txt");
link("dangling_in", "nothing.txt");
link("dangling_out", "../outside/missing.txt");
link("dangling_abs_out", "/nonexistent-moat-jail/x");
link("sibling_link", "../root2/secret.txt");
link("sibling_abs_link", path.join(sibling, "secret.txt"));
link("sibling_dir_link", "../root2");
link("devnull_link", "/dev/null");
link("proc_root_link", "/proc/self/root");
link("loop_a", "loop_b");
link("loop_b", "loop_a");
link("self_loop", "self_loop");

after(() => {
  _internals.afterResolve = undefined;
  _internals.beforeOpen = undefined;
  _internals.useProcFd = true;
  fs.rmSync(base, { recursive: true, force: true });
});

const jail: Jail = await createJail(root);

/** Reads a whole opened file as text. */
function readAll(fd: number, size: number): string {
  const buf = new Uint8Array(size);
  let off = 0;
  while (off < size) {
    const n = fs.readSync(fd, buf, off, size - off, off);
    if (n === 0) break;
    off += n;
  }
  return new TextDecoder().decode(buf.subarray(0, off));
}

/**
 * Asserts that `err` is a one-line PathError with `code` that hides the root
 * (unless the request itself contained it).
 */
function assertRefusal(err: unknown, code: Code, request = ""): true {
  assert.ok(err instanceof PathError, `expected PathError, got ${err}`);
  assert.equal(err.code, code, err.message);
  assert.equal(err.name, "PathError");
  assert.equal(err.cause, undefined);
  for (const ch of err.message) {
    const c = ch.codePointAt(0) ?? 0;
    const raw = c < 0x20 || (c >= 0x7f && c <= 0x9f) || c === 0x2028 ||
      c === 0x2029 || c === 0x202e;
    assert.ok(!raw, `raw U+${c.toString(16)} in message: ${err.message}`);
  }
  if (!request.includes(base)) {
    assert.ok(!err.message.includes(base), `message leaks: ${err.message}`);
  }
  assert.doesNotMatch(err.message, /\.$/);
  return true;
}

/** Opens `p`; if it opened, checks the content and that the fd is inside. */
async function openExpect(
  j: Jail,
  p: string,
  expect: Code | string,
): Promise<void> {
  if (expect.startsWith("ERR_")) {
    await assert.rejects(
      () => j.open(p),
      (err) => assertRefusal(err, expect as Code, p),
    );
    return;
  }
  const file = await j.open(p);
  try {
    const text = readAll(file.fd, file.size);
    assert.ok(!text.startsWith("OUTSIDE"), `escaped: ${text}`);
    assert.equal(text, expect);
    assert.equal(file.path, validateRequestPath(p));
    if (IS_LINUX) {
      const real = fs.readlinkSync(`/proc/self/fd/${file.fd}`);
      assert.ok(real.startsWith(j.root + path.sep), real);
    }
  } finally {
    file.close();
  }
}

// ---------------------------------------------------------------------------
// The hostile table: every row is refused with the given code, or opens the
// given content from inside the root.

interface Row {
  path: string;
  expect: Code | string;
  note: string;
}

function rows(expect: Code | string, note: string, paths: string[]): Row[] {
  return paths.map((p) => ({ path: p, expect, note }));
}

const HOSTILE: Row[] = [
  // Traversal.
  ...rows(OUT, "dot-dot climbing above the root", [
    "..",
    "../",
    "../a.txt",
    "../../etc/passwd",
    "../".repeat(20) + "etc/passwd",
    "./../a.txt",
    "a.txt/../../a.txt",
    "dir/../../outside/secret.txt",
    "dir/sub/../../../root2/secret.txt",
    "../root/a.txt",
    "../root2/secret.txt",
    "../".repeat(1365),
  ]),
  ...rows(BAD, "dot-dot staying inside (refused: links can climb)", [
    "dir/../a.txt",
    "dir/..",
    "dir/sub/../../a.txt",
    "dir_in_link/../a.txt",
    "#/../a.txt",
  ]),
  ...rows(BAD, "segment of only dots", [
    "...",
    "....",
    ".../a.txt",
    "..../a.txt",
    "dir/.../b.txt",
  ]),
  // Encoded dots and separators are literal names.
  ...rows(NF, "percent-encoding is not decoded", [
    "%2e%2e/a.txt",
    "%2e%2e%2fa.txt",
    "..%2fa.txt",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%5ca.txt",
    "%252e%252e/a.txt",
    "..%252f..%252fetc/passwd",
    "%c0%ae%c0%ae/a.txt",
    "%uff0e%uff0e/a.txt",
    ".%2e/a.txt",
    "%2e./a.txt",
    "dir/%2e%2e/a.txt",
    "&#46;&#46;/a.txt",
    "a.txt%00.png",
    "%00",
    "?../a.txt",
  ]),
  // Separators, absolute, UNC, drives.
  ...rows(BAD, "backslash or mixed separators", [
    "..\\a.txt",
    "dir\\b.txt",
    "..\\..\\windows\\win.ini",
    "dir/..\\..\\a.txt",
    "\\\\server\\share\\x",
    "\\a.txt",
    "dir/\\../a.txt",
    "dir\\/b.txt",
    "./\\",
  ]),
  ...rows(BAD, "absolute or UNC-style", [
    "/etc/passwd",
    "/",
    "//server/share/a.txt",
    "///etc/passwd",
    "//?/C:/x",
    path.join(root, "a.txt"),
  ]),
  ...rows(BAD, "Windows drive letter", [
    "C:",
    "c:foo",
    "C:\\Windows\\win.ini",
    "C:/Windows/win.ini",
    "z:a.txt",
  ]),
  ...rows(BAD, "empty path or segment", [
    "",
    "dir//b.txt",
    "a.txt/",
    "dir/",
    "./",
    "file:///etc/passwd",
    "http://x/../a.txt",
  ]),
  ...rows(BAD, "names the root", [".", "./.", "././."]),
  // Trailing dots and spaces.
  ...rows(NF, "trailing dots or spaces are literal", [
    "a.txt.",
    "a.txt ",
    "a.txt...",
    "a.txt. . .",
    " a.txt",
    "dir /b.txt",
    "dir./b.txt",
    "a.txt::$DATA",
  ]),
  ...rows(BAD, "segment of only dots and spaces", [
    " ",
    "  ",
    ". ",
    " .",
    ".. ",
    " ..",
    ". ./a.txt",
    "dir/ /b.txt",
    "dir/. ./b.txt",
    ".. /a.txt",
  ]),
  // Control characters.
  ...rows(BAD, "NUL or control character", [
    "\0",
    "a.txt\0",
    "a.txt\0.png",
    "\0../a.txt",
    "\x01",
    "a\nb",
    "a.txt\r\n",
    "\t",
    "\x1b[31ma.txt",
    "\x7f",
    "a\x7f.txt",
    "\x85",
    "\u009b",
  ]),
  ...rows(BAD, "lone surrogate", ["\ud800", "a\udc00.txt", "\ud83d"]),
  // Unicode look-alikes: literal names, never separators or dots.
  ...rows(NF, "Unicode look-alike", [
    "\u2024\u2024/a.txt",
    "\u2025/a.txt",
    "\uff0e\uff0e/a.txt",
    "\uff0e\uff0e\uff0fa.txt",
    "..\uff0fa.txt",
    "..\u2215a.txt",
    "..\u2044a.txt",
    "..\uff3ca.txt",
    "\u3002\u3002/a.txt",
    "\ufe52\ufe52/a.txt",
    ".\u0307./a.txt",
    "\u200b../a.txt",
    "..\u200b/a.txt",
    "\ufeff../a.txt",
    "\u202e../a.txt",
    "dir\u2215b.txt",
    "a.t\u0445t",
    "\u00a0",
    "\u3000",
  ]),
  ...rows(NF, "Unicode normalisation is not applied", [
    "cafe\u0301.txt",
    "CAF\u00c9.txt",
    "A.TXT",
  ]),
  // Long paths.
  ...rows(NF, "longest legal segment or path", [
    "x".repeat(MAX_SEGMENT_BYTES),
    "\u00e9".repeat(127),
    "\u{1f600}".repeat(63),
    "d/".repeat(2047) + "f",
  ]),
  ...rows(BAD, "too long", [
    "x".repeat(MAX_SEGMENT_BYTES + 1),
    "\u00e9".repeat(128),
    "\u{1f600}".repeat(64),
    "d/".repeat(2048) + "f",
    "x".repeat(100_000),
    "../".repeat(1366),
    "\u00e9".repeat(2049),
  ]),
  // Symbolic links.
  ...rows(OUT, "link leaving the root", [
    "out_link",
    "out_rel_link",
    "etc_link",
    "deep_etc_link",
    "chain_out1",
    "dir_out_link",
    "dir_out_link/secret.txt",
    "dotdot_out_link",
    "dangling_out",
    "dangling_abs_out",
    "sibling_link",
    "sibling_abs_link",
    "sibling_dir_link/secret.txt",
    "devnull_link",
    "proc_root_link/etc/passwd",
    "root_link/out_link",
    "dir_in_link/chain_out3",
  ]),
  ...rows(NF, "missing, through a file, or a link loop", [
    "missing.txt",
    "missing/a.txt",
    "a.txt/x",
    "in_link/x",
    "dangling_in",
    "loop_a",
    "self_loop",
    "loop_a/x",
    "~/.ssh/id_rsa",
    "$HOME/a.txt",
    "CON",
    "dir/*",
  ]),
  ...rows(NOT_FILE, "directory", [
    "dir",
    "dir/sub",
    "dir_in_link",
    "root_link",
    "root_link/dir",
  ]),
  // Allowed: each of these opens a file inside the root.
  { path: "\u2024\u2024", expect: "INSIDE:one-dot-leaders", note: "literal" },
  { path: "a.txt:$DATA", expect: "INSIDE:colon", note: "literal colon" },
  { path: "caf\u00e9.txt", expect: "INSIDE:cafe-nfc", note: "exact NFC" },
  { path: "./a.txt", expect: "INSIDE:a", note: "dot segment dropped" },
  { path: "dir/./b.txt", expect: "INSIDE:b", note: "dot segment dropped" },
  {
    path: "dir/" + "./".repeat(2040) + "b.txt",
    expect: "INSIDE:b",
    note: "many dot segments",
  },
  { path: "in_link", expect: "INSIDE:a", note: "link inside" },
  { path: "abs_in_link", expect: "INSIDE:a", note: "absolute link inside" },
  { path: "dir_in_link/b.txt", expect: "INSIDE:b", note: "dir link inside" },
  { path: "chain_in1", expect: "INSIDE:b", note: "chain inside" },
  { path: "root_link/a.txt", expect: "INSIDE:a", note: "link to root" },
  {
    path: "root_link/root_link/root_link/a.txt",
    expect: "INSIDE:a",
    note: "repeated link to root",
  },
  { path: "up_and_back", expect: "INSIDE:a", note: "link out and back in" },
  { path: "dir/sub/up2", expect: "INSIDE:a", note: "relative link up" },
];

const ALLOWED: Row[] = [
  { path: "a.txt", expect: "INSIDE:a", note: "plain" },
  { path: "dir/b.txt", expect: "INSIDE:b", note: "plain" },
  { path: "dir/sub/c.txt", expect: "INSIDE:c", note: "plain" },
  { path: ".hidden", expect: "INSIDE:hidden", note: "dot file" },
];

/** A test-name-safe rendering of `p`: escaped, shortened. */
function label(p: string): string {
  const q = JSON.stringify(p).replace(
    /[\u007f-\u009f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g,
    (ch) => "\\u" + ch.charCodeAt(0).toString(16).padStart(4, "0"),
  );
  const units = Array.from(q);
  return units.length > 60
    ? `${units.slice(0, 50).join("")}… (${p.length} units)`
    : q;
}

describe("Jail.open hostile table", () => {
  test("Jail.open hostile table has at least 100 rows", () => {
    assert.ok(HOSTILE.length >= 100, `${HOSTILE.length} rows`);
    const unique = new Set(HOSTILE.map((r) => r.path));
    assert.equal(unique.size, HOSTILE.length, "duplicate rows");
  });
  for (const row of [...HOSTILE, ...ALLOWED]) {
    const outcome = row.expect.startsWith("ERR_")
      ? `refuses with ${row.expect}`
      : "opens inside";
    test(`Jail.open ${outcome}: ${label(row.path)} (${row.note})`, async () => {
      await openExpect(jail, row.path, row.expect);
    });
  }
});

test("OpenedFile reports fstat facts and closes once", async () => {
  const file = await jail.open("dir/./b.txt");
  const stats = fs.statSync(path.join(root, "dir/b.txt"));
  assert.equal(file.path, "dir/b.txt");
  assert.equal(file.size, stats.size);
  assert.equal(file.dev, stats.dev);
  assert.equal(file.ino, stats.ino);
  assert.ok(Math.abs(file.mtimeMs - stats.mtimeMs) < 1, `${file.mtimeMs}`);
  const buf = new Uint8Array(3);
  assert.equal(fs.readSync(file.fd, buf, 0, 3, 6), 2);
  assert.equal(new TextDecoder().decode(buf.subarray(0, 2)), ":b");
  file.close();
  file.close();
  assert.throws(() => fs.fstatSync(file.fd), { code: "EBADF" });
});

// ---------------------------------------------------------------------------

describe("validateRequestPath", () => {
  const NORMALISED: [string, string][] = [
    ["a.txt", "a.txt"],
    ["./a.txt", "a.txt"],
    ["a/./b/./c", "a/b/c"],
    ["./././x", "x"],
    ["%2e%2e/x", "%2e%2e/x"],
    ["\u2024\u2024/x", "\u2024\u2024/x"],
    ["a.txt.", "a.txt."],
    [".env", ".env"],
    ["x".repeat(255), "x".repeat(255)],
  ];
  for (const [input, output] of NORMALISED) {
    test(`validateRequestPath normalises ${label(input)}`, () => {
      assert.equal(validateRequestPath(input), output);
    });
  }

  test("validateRequestPath accepts exactly MAX_PATH_BYTES bytes", () => {
    const p = "ab/".repeat(1365) + "x";
    assert.equal(new TextEncoder().encode(p).length, MAX_PATH_BYTES);
    assert.equal(validateRequestPath(p), p);
    assert.throws(() => validateRequestPath(p + "y"), { code: BAD });
  });

  test("validateRequestPath counts UTF-8 bytes, not UTF-16 units", () => {
    // 85 × 3 bytes and 63 × 4 + 3 bytes: exactly MAX_SEGMENT_BYTES each.
    for (const segment of ["€".repeat(85), "😀".repeat(63) + "abc"]) {
      assert.equal(new TextEncoder().encode(segment).length, 255);
      assert.equal(validateRequestPath(segment), segment);
      assert.throws(() => validateRequestPath(segment + "é"), {
        code: BAD,
        message: /has a segment longer than 255 bytes$/,
      });
    }
    // 16 × 255 + 16 bytes in 2,056 UTF-16 units.
    const p = ("é".repeat(127) + "/").repeat(16) + "é".repeat(8);
    assert.equal(new TextEncoder().encode(p).length, MAX_PATH_BYTES);
    assert.equal(validateRequestPath(p), p);
    assert.throws(() => validateRequestPath(p + "x"), {
      code: BAD,
      message: /is longer than 4096 bytes$/,
    });
  });

  test("validateRequestPath refuses a non-string", () => {
    for (const value of [undefined, null, 1, ["a"]]) {
      assert.throws(
        () => validateRequestPath(value as unknown as string),
        { code: BAD, message: "Invalid path: not a string" },
      );
    }
  });

  const MESSAGES: [string, string][] = [
    ["", 'Invalid path: "" is empty'],
    ["a\0b", 'Invalid path: "a\\u0000b" contains a NUL byte'],
    [
      "a\x1bb",
      'Invalid path: "a\\u001bb" contains the control character U+001B',
    ],
    [
      "a\x7fb",
      'Invalid path: "a\\u007fb" contains the control character U+007F',
    ],
    ["a\\b", 'Invalid path: "a\\\\b" contains a backslash'],
    ["/etc/passwd", 'Invalid path: "/etc/passwd" is absolute'],
    ["//srv/x", 'Invalid path: "//srv/x" is a UNC-style path'],
    ["c:foo", 'Invalid path: "c:foo" starts with a Windows drive letter'],
    ["a//b", 'Invalid path: "a//b" contains an empty segment'],
    [
      "a/. /b",
      'Invalid path: "a/. /b" has a segment made only of dots and spaces',
    ],
    ["a/../b", 'Invalid path: "a/../b" contains a ".." segment'],
    ["../etc/passwd", 'Refused path: "../etc/passwd" climbs above the root'],
    [".", 'Invalid path: "." names the root, not a file'],
    [
      "\ud800",
      'Invalid path: "\\ud800" is not well-formed Unicode (lone surrogate)',
    ],
    [
      "x".repeat(256),
      `Invalid path: "${"x".repeat(96)}"… has a segment longer than 255 bytes`,
    ],
  ];
  for (const [input, message] of MESSAGES) {
    test(`validateRequestPath explains ${label(input)}`, () => {
      assert.throws(() => validateRequestPath(input), (err) => {
        assert.ok(err instanceof PathError);
        assert.equal(err.message, message);
        return true;
      });
    });
  }

  test("validateRequestPath escapes bidi and invisible characters in messages", () => {
    assert.throws(() => validateRequestPath("\u202e/../../x"), (err) => {
      assert.ok(err instanceof PathError);
      assert.equal(err.code, OUT);
      assert.ok(err.message.includes("\\u202e"), err.message);
      assert.ok(!err.message.includes("\u202e"));
      return true;
    });
  });

  test("validateRequestPath shortens a huge path in the message", () => {
    assert.throws(() => validateRequestPath("a/".repeat(50_000)), (err) => {
      assert.ok(err instanceof PathError);
      assert.ok(err.message.length < 160, `${err.message.length} chars`);
      assert.match(err.message, /longer than 4096 bytes$/);
      return true;
    });
  });
});

// ---------------------------------------------------------------------------

describe("createJail", () => {
  test("createJail resolves a root that is itself a symbolic link", async () => {
    const rootLink = path.join(base, "root_alias");
    fs.symlinkSync("root", rootLink);
    const aliased = await createJail(rootLink);
    assert.equal(aliased.root, root);
    await openExpect(aliased, "a.txt", "INSIDE:a");
    await openExpect(aliased, "in_link", "INSIDE:a");
    await openExpect(aliased, "out_link", OUT);
    await openExpect(aliased, "sibling_link", OUT);
  });

  test("createJail accepts a relative root", async () => {
    const rel = path.relative(process.cwd(), root);
    const relative = await createJail(rel);
    assert.equal(relative.root, root);
    await openExpect(relative, "dir/b.txt", "INSIDE:b");
  });

  test("createJail refuses a sibling whose name extends the root's", async () => {
    // base/root vs base/root2: a plain prefix test would let these through.
    const j = await createJail(root);
    for (
      const p of [
        "sibling_link",
        "sibling_abs_link",
        "sibling_dir_link/secret.txt",
      ]
    ) {
      await openExpect(j, p, OUT);
    }
    assert.ok(sibling.startsWith(j.root));
  });

  const BAD_ROOTS: [string, string, RegExp][] = [
    ["a missing root", path.join(base, "nope"), /does not exist$/],
    ["a file", path.join(root, "a.txt"), /is not a directory$/],
    ["a dangling link", path.join(root, "dangling_in"), /does not exist$/],
    ["an empty string", "", /expected a directory path$/],
  ];
  for (const [what, value, message] of BAD_ROOTS) {
    test(`createJail refuses ${what}`, async () => {
      await assert.rejects(() => createJail(value), (err) => {
        assert.ok(err instanceof UsageError);
        assert.equal(err.code, "ERR_USAGE");
        assert.match(err.message, message);
        return true;
      });
    });
  }

  test("createJail serves the file system root as a directory", async () => {
    const slash = await createJail("/");
    assert.equal(slash.root, "/");
    await openExpect(slash, "..", OUT);
    await openExpect(slash, "etc", NOT_FILE);
  });
});

// ---------------------------------------------------------------------------

describe("Jail.open special files", () => {
  test("Jail.open refuses a unix socket with ERR_NOT_FILE", async () => {
    const sockPath = path.join(root, "sock");
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(sockPath, resolve);
    });
    try {
      assert.ok(fs.lstatSync(sockPath).isSocket());
      await openExpect(jail, "sock", NOT_FILE);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      fs.rmSync(sockPath, { force: true });
    }
  });

  test("Jail.open refuses FIFOs with ERR_NOT_FILE without blocking", async () => {
    // In a child process with a timeout, so a blocking open fails the test
    // instead of hanging the runner.
    const dir = path.join(base, "fifo_root");
    fs.mkdirSync(dir);
    await run("mkfifo", [path.join(dir, "fifo")]);
    fs.symlinkSync("fifo", path.join(dir, "fifo_link"));
    put(path.join(dir, "swapped"), "INSIDE:swapped");
    const result = await runScript(
      `
      import fs from "node:fs";
      import { execFileSync } from "node:child_process";
      import { _internals, createJail } from ${JSON.stringify(JAIL_URL)};
      const jail = await createJail(${JSON.stringify(dir)});
      const out = {};
      for (const p of ["fifo", "fifo_link", "swapped"]) {
        if (p === "swapped") {
          _internals.beforeOpen = (real) => {
            fs.rmSync(real);
            execFileSync("mkfifo", [real]);
          };
        }
        const start = Date.now();
        try {
          const f = await jail.open(p);
          f.close();
          out[p] = ["opened", Date.now() - start];
        } catch (e) {
          out[p] = [e.code, Date.now() - start];
        }
      }
      console.log(JSON.stringify(out));
    `,
      { timeoutMs: 20_000 },
    );
    assert.equal(result.timedOut, false, "child blocked on a FIFO");
    assert.equal(result.status, 0, result.stderr);
    const out = JSON.parse(result.stdout) as Record<string, [string, number]>;
    for (const p of ["fifo", "fifo_link", "swapped"]) {
      const [code, ms] = out[p] ?? ["missing", 0];
      assert.equal(code, NOT_FILE, p);
      assert.ok(ms < 5_000, `${p} took ${ms} ms`);
    }
    assert.ok(fs.lstatSync(path.join(dir, "swapped")).isFIFO());
  });

  test("Jail.open maps EACCES to ERR_PERMISSION and hides outside ones", async (t) => {
    const isRoot = process.getuid?.() === 0;
    if (isRoot && !fs.existsSync("/usr/bin/setpriv")) {
      t.skip("running as root without setpriv");
      return;
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-jail-perm-"));
    try {
      const permRoot = path.join(dir, "root");
      put(path.join(permRoot, "locked.txt"), "INSIDE:locked");
      put(path.join(permRoot, "locked_dir/x.txt"), "INSIDE:x");
      put(path.join(permRoot, "open.txt"), "INSIDE:open");
      put(path.join(dir, "outside_locked/x.txt"), "OUTSIDE:x");
      fs.symlinkSync(
        "../outside_locked/x.txt",
        path.join(permRoot, "out_locked"),
      );
      fs.chmodSync(path.join(permRoot, "locked.txt"), 0o000);
      fs.chmodSync(path.join(permRoot, "locked_dir"), 0o000);
      fs.chmodSync(path.join(dir, "outside_locked"), 0o000);
      fs.chmodSync(dir, 0o755);
      fs.mkdirSync(path.join(dir, "deno_dir"), { mode: 0o777 });
      fs.chmodSync(path.join(dir, "deno_dir"), 0o777);
      const result = await runScript(
        `
        import { createJail } from ${JSON.stringify(JAIL_URL)};
        const jail = await createJail(${JSON.stringify(permRoot)});
        const out = {};
        for (const p of ["locked.txt", "locked_dir/x.txt", "out_locked", "open.txt"]) {
          try { (await jail.open(p)).close(); out[p] = "opened"; }
          catch (e) { out[p] = e.code; }
        }
        console.log(JSON.stringify(out));
      `,
        { timeoutMs: 20_000, asNobody: isRoot, dir },
      );
      assert.equal(result.status, 0, result.stderr);
      assert.deepEqual(JSON.parse(result.stdout), {
        "locked.txt": "ERR_PERMISSION",
        "locked_dir/x.txt": "ERR_PERMISSION",
        "out_locked": OUT,
        "open.txt": "opened",
      });
    } finally {
      fs.chmodSync(path.join(dir, "root/locked_dir"), 0o755);
      fs.chmodSync(path.join(dir, "outside_locked"), 0o755);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------
// TOCTOU: the path changes between the check and the open.

describe("Jail.open races", () => {
  const raceRoot = path.join(root, "race");
  const raceOutside = path.join(outside, "race");

  function reset(): void {
    fs.rmSync(raceRoot, { recursive: true, force: true });
    fs.rmSync(raceOutside, { recursive: true, force: true });
    put(path.join(raceRoot, "d/f"), "INSIDE:race");
    put(path.join(raceOutside, "d/f"), "OUTSIDE:race");
    put(path.join(raceOutside, "f"), "OUTSIDE:race");
  }

  async function withHooks(
    hooks: {
      afterResolve?: (real: string) => void;
      beforeOpen?: (real: string) => void;
      useProcFd?: boolean;
    },
    body: (j: Jail) => Promise<void>,
  ): Promise<void> {
    reset();
    _internals.useProcFd = hooks.useProcFd ?? true;
    const j = await createJail(root);
    _internals.afterResolve = hooks.afterResolve;
    _internals.beforeOpen = hooks.beforeOpen;
    try {
      await body(j);
    } finally {
      _internals.afterResolve = undefined;
      _internals.beforeOpen = undefined;
      _internals.useProcFd = true;
    }
  }

  function swapDirForLink(real: string): void {
    // real = .../race/d/f: replace .../race/d by a link to the outside copy.
    const d = path.dirname(real);
    fs.renameSync(d, d + "_old");
    fs.symlinkSync(path.join(raceOutside, "d"), d);
  }

  test("Jail.open refuses a final component swapped for an outside link", async () => {
    await withHooks({
      beforeOpen(real) {
        fs.rmSync(real);
        fs.symlinkSync(path.join(raceOutside, "f"), real);
      },
    }, async (j) => {
      await openExpect(j, "race/d/f", OUT);
    });
  });

  test("Jail.open refuses a file replaced by another between stat and open", async () => {
    await withHooks({
      beforeOpen(real) {
        fs.writeFileSync(real + ".new", "INSIDE:other");
        fs.renameSync(real + ".new", real);
      },
    }, async (j) => {
      await openExpect(j, "race/d/f", OUT);
    });
  });

  test("Jail.open refuses a file swapped for a directory before open", async () => {
    await withHooks({
      beforeOpen(real) {
        fs.rmSync(real);
        fs.mkdirSync(real);
      },
    }, async (j) => {
      await openExpect(j, "race/d/f", NOT_FILE);
    });
  });

  test("Jail.open refuses a parent directory swapped for an outside link", async () => {
    // lstat and open both follow the swapped directory and agree on dev+ino;
    // only the descriptor's own path (/proc/self/fd) shows the escape.
    await withHooks({ afterResolve: swapDirForLink }, async (j) => {
      await openExpect(j, "race/d/f", OUT);
    });
  });

  test("Jail.open without /proc still refuses a swapped parent directory", async () => {
    await withHooks(
      { afterResolve: swapDirForLink, useProcFd: false },
      async (j) => {
        await openExpect(j, "race/d/f", OUT);
      },
    );
  });

  test("Jail.open never yields outside content while a child swaps paths", async () => {
    // A child process swaps race/d (directory <-> link to outside/race/d) and
    // race/f (file <-> link to outside/race/f) with rename(2), up to 2,000
    // cycles, while this process opens both paths up to 20,000 times.
    reset();
    put(path.join(raceRoot, "f"), "INSIDE:race");
    fs.symlinkSync(path.join(raceOutside, "d"), path.join(raceRoot, "d_sym"));
    fs.symlinkSync(path.join(raceOutside, "f"), path.join(raceRoot, "f_sym"));
    const stop = path.join(base, "race_stop");
    const j = await createJail(root);
    const child = startScript(
      `
      import fs from "node:fs";
      const dir = ${JSON.stringify(raceRoot)};
      const stop = ${JSON.stringify(stop)};
      const end = Date.now() + 20000;
      let cycles = 0;
      console.log("ready");
      while (cycles < 2000 && Date.now() < end && !fs.existsSync(stop)) {
        fs.renameSync(dir + "/d", dir + "/d_real");
        fs.renameSync(dir + "/d_sym", dir + "/d");
        fs.renameSync(dir + "/f", dir + "/f_real");
        fs.renameSync(dir + "/f_sym", dir + "/f");
        fs.renameSync(dir + "/d", dir + "/d_sym");
        fs.renameSync(dir + "/d_real", dir + "/d");
        fs.renameSync(dir + "/f", dir + "/f_sym");
        fs.renameSync(dir + "/f_real", dir + "/f");
        cycles++;
      }
      console.log("cycles " + cycles);
    `,
      { timeoutMs: 30_000 },
    );
    await child.ready;
    const counts: Record<string, number> = {};
    let escapes = 0;
    let attempts = 0;
    const deadline = Date.now() + 20_000;
    while (!child.exited && attempts < 20_000 && Date.now() < deadline) {
      const p = attempts % 2 === 0 ? "race/d/f" : "race/f";
      attempts++;
      try {
        const file = await j.open(p);
        try {
          const text = readAll(file.fd, file.size);
          if (text !== "INSIDE:race") escapes++;
          counts.opened = (counts.opened ?? 0) + 1;
        } finally {
          file.close();
        }
      } catch (err) {
        assert.ok(err instanceof PathError, String(err));
        counts[err.code] = (counts[err.code] ?? 0) + 1;
      }
      if (attempts % 50 === 0) await new Promise((r) => setTimeout(r, 0));
    }
    fs.writeFileSync(stop, "");
    const result = await child.done;
    assert.equal(result.status, 0, result.stderr);
    const cycles = Number(/cycles (\d+)/.exec(result.stdout)?.[1] ?? "0");
    // deno-lint-ignore no-console
    console.log(
      `race: ${attempts} opens, ${cycles} swap cycles, outcomes ${
        JSON.stringify(counts)
      }, escapes ${escapes}`,
    );
    assert.equal(escapes, 0);
    assert.ok(cycles > 0, "the child never swapped");
    assert.ok((counts.opened ?? 0) > 0, "nothing ever opened");
    for (const code of Object.keys(counts)) {
      assert.ok(["opened", OUT, NF, NOT_FILE].includes(code), code);
    }
  });
});

// ---------------------------------------------------------------------------
// Child processes (same runtime as the test).

interface ChildResult {
  status: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

interface ScriptOptions {
  timeoutMs: number;
  asNobody?: boolean;
  dir?: string;
}

function startScript(
  source: string,
  options: ScriptOptions,
): {
  ready: Promise<void>;
  done: Promise<ChildResult>;
  readonly exited: boolean;
} {
  const dir = options.dir ?? base;
  const file = path.join(
    dir,
    `child_${Date.now()}_${Math.random().toString(36).slice(2)}.mjs`,
  );
  fs.writeFileSync(file, source, { mode: 0o644 });
  const runtime = process.execPath;
  const isDeno = navigator.userAgent.startsWith("Deno");
  let args = isDeno ? ["run", "-A", file] : [file];
  let command = runtime;
  const env: Record<string, string> = { PATH: process.env.PATH ?? "" };
  if (options.asNobody) {
    args = [
      "--reuid=65534",
      "--regid=65534",
      "--clear-groups",
      "--",
      runtime,
      ...args,
    ];
    command = "setpriv";
    env.HOME = dir;
    env.DENO_DIR = path.join(dir, "deno_dir");
  } else {
    if (process.env.HOME) env.HOME = process.env.HOME;
    if (process.env.DENO_DIR) env.DENO_DIR = process.env.DENO_DIR;
  }
  const child = spawn(command, args, {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  let exited = false;
  let timedOut = false;
  let onReady: () => void = () => {};
  const ready = new Promise<void>((resolve) => (onReady = resolve));
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  child.stdout.on("data", (chunk: string) => {
    stdout += chunk;
    if (stdout.includes("ready")) onReady();
  });
  child.stderr.on("data", (chunk: string) => (stderr += chunk));
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, options.timeoutMs);
  const done = new Promise<ChildResult>((resolve) => {
    child.on("close", (status) => {
      exited = true;
      clearTimeout(timer);
      onReady();
      fs.rmSync(file, { force: true });
      resolve({ status, stdout, stderr, timedOut });
    });
  });
  return {
    ready,
    done,
    get exited() {
      return exited;
    },
  };
}

function runScript(
  source: string,
  options: ScriptOptions,
): Promise<ChildResult> {
  return startScript(source, options).done;
}

function run(command: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: "ignore" });
    child.on("error", reject);
    child.on(
      "close",
      (status) =>
        status === 0
          ? resolve()
          : reject(new Error(`${command} exited ${status}`)),
    );
  });
}
