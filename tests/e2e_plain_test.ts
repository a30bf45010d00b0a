/**
 * End-to-end tests of plain-text interop: real `nc` (netcat-openbsd), `socat`
 * and a telnet-style client (writes a message without a newline, then waits)
 * against a real `moat serve`, next to framed `moat chat` clients and the
 * operator's console. The shell one-liners here are the ones the README shows.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import process from "node:process";
import {
  LineWatcher,
  PRESENCE,
  type RunningServer,
  sha256File,
  spawnMoat,
  startServer,
  tempDir,
  writeRandomFile,
} from "./_e2e.ts";

const MIB = 1 << 20;

/** Fails with a clear message unless netcat-openbsd and socat are installed. */
function requireTools(): void {
  // netcat-openbsd prints its help to stderr and exits 1.
  const nc = spawnSync("nc", ["-h"], { encoding: "utf8" });
  if (nc.error) throw new Error("nc is not installed: run scripts/deps.sh");
  if (!`${nc.stdout}${nc.stderr}`.includes("OpenBSD")) {
    throw new Error(
      "nc is not netcat-openbsd (needed for -N): run scripts/deps.sh",
    );
  }
  if (spawnSync("socat", ["-V"], { encoding: "utf8" }).error) {
    throw new Error("socat is not installed: run scripts/deps.sh");
  }
}

/** Result of a shell one-liner. */
interface ShellResult {
  code: number | null;
  stdout: Uint8Array;
  text: string;
  stderr: string;
  ms: number;
}

/**
 * Runs a shell one-liner under coreutils `timeout` (which kills the whole
 * pipeline), with a second, JS-side bound in case even that hangs.
 */
function sh(
  command: string,
  options: { cwd: string; timeoutS?: number },
): Promise<ShellResult> {
  const limit = options.timeoutS ?? 30;
  const started = performance.now();
  const child = spawn("timeout", [
    "-k",
    "2",
    String(limit),
    "sh",
    "-c",
    command,
  ], {
    cwd: options.cwd,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const out: Uint8Array[] = [];
  let stderr = "";
  child.stdout!.on("data", (d: Uint8Array) => out.push(d));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      killChild(child);
      reject(new Error(`"${command}" did not end within ${limit + 5} s`));
    }, (limit + 5) * 1000);
    child.on("close", (code) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out);
      resolve({
        code,
        stdout,
        text: stdout.toString("utf8"),
        stderr,
        ms: performance.now() - started,
      });
    });
  });
}

/** SIGKILL through process.kill (see tests/_e2e.ts on Deno's child.kill). */
function killChild(child: ChildProcess): void {
  if (
    child.exitCode === null && child.signalCode === null &&
    child.pid !== undefined
  ) {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
}

/** Waits for a child to exit, killing it after `timeoutMs`. */
function exited(
  child: ChildProcess,
  timeoutMs = 10_000,
): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve(child.exitCode);
  }
  return new Promise((resolve) => {
    const timer = setTimeout(() => killChild(child), timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

/** An interactive line client (`nc -N …` or `socat - TCP:…`) with its stdin kept open. */
function lineClient(argv: string[]) {
  const child = spawn(argv[0]!, argv.slice(1), {
    stdio: ["pipe", "pipe", "pipe"],
  });
  const out = new LineWatcher(child.stdout!);
  const done = exited(child, 60_000);
  return {
    child,
    out,
    send: (bytes: string) => child.stdin!.write(bytes),
    /** Ends stdin: `nc -N` and socat pass the EOF on; the server then closes. */
    async quit(): Promise<number | null> {
      child.stdin!.end();
      const timer = setTimeout(() => killChild(child), 10_000);
      const code = await done;
      clearTimeout(timer);
      return code;
    },
  };
}

/** A framed `moat chat` client. */
async function chatClient(port: number) {
  const child = spawnMoat(["chat", "--server", `127.0.0.1:${port}`]);
  const out = new LineWatcher(child.stdout!);
  const err = new LineWatcher(child.stderr!);
  const done = exited(child, 120_000);
  const hello = await err.waitFor(
    (l) => l.includes("connected"),
    15_000,
    "chat connected",
  );
  const name = /as ([0-9a-z]{4}-c\d+)/.exec(hello)![1]!;
  return {
    out,
    name,
    say: (line: string) => child.stdin!.write(line + "\n"),
    async quit(): Promise<number | null> {
      child.stdin!.end();
      const timer = setTimeout(() => killChild(child), 10_000);
      const code = await done;
      clearTimeout(timer);
      return code;
    },
  };
}

/**
 * A telnet-style client, like the classic C client: each message is one
 * write with no newline, then it waits for the answer.
 */
class RawClient {
  #socket: net.Socket;
  #chunks: Uint8Array[] = [];
  #waiters = new Set<() => void>();
  /** Resolves once the server has closed (or reset) the connection. */
  readonly closed: Promise<void>;
  readonly connected: Promise<void>;

  constructor(port: number) {
    this.#socket = net.connect({ host: "127.0.0.1", port });
    this.#socket.on("data", (d: Uint8Array) => {
      this.#chunks.push(d);
      for (const w of [...this.#waiters]) w();
    });
    this.#socket.on("error", () => {});
    this.connected = new Promise((resolve, reject) => {
      this.#socket.once("connect", () => resolve());
      this.#socket.once("error", reject);
    });
    this.closed = new Promise((resolve) =>
      this.#socket.once("close", () => resolve())
    );
  }

  /** Everything received so far. */
  get bytes(): Uint8Array {
    return Buffer.concat(this.#chunks);
  }

  get text(): string {
    return Buffer.from(this.bytes).toString("utf8");
  }

  write(text: string): void {
    this.#socket.write(text);
  }

  /** Resolves once the received text matches, or rejects after `timeoutMs`. */
  waitText(
    pred: (text: string) => boolean,
    timeoutMs = 10_000,
    what = "text",
  ): Promise<string> {
    if (pred(this.text)) return Promise.resolve(this.text);
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!pred(this.text)) return;
        this.#waiters.delete(check);
        clearTimeout(timer);
        resolve(this.text);
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(
          new Error(
            `Timed out waiting for ${what}; got ${JSON.stringify(this.text)}`,
          ),
        );
      }, timeoutMs);
      this.#waiters.add(check);
    });
  }

  /** Resolves true once the server closes, false after `timeoutMs`. */
  async waitClosed(timeoutMs = 10_000): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<false>((
      resolve,
    ) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    const ok = await Promise.race([
      this.closed.then(() => true as const),
      late,
    ]);
    clearTimeout(timer);
    return ok;
  }

  destroy(): void {
    this.#socket.destroy();
  }
}

/** The name the server gave the plain client whose line the operator saw. */
function senderOf(line: string): { name: string; addr: string } {
  const m = /^\[([0-9a-z]{4}-c\d+) (127\.0\.0\.1:\d+)\] /.exec(line);
  assert.ok(m, `not a tagged client line: ${JSON.stringify(line)}`);
  return { name: m[1]!, addr: m[2]! };
}

/** Audit events for one connection name, in order. */
function eventsOf(server: RunningServer, name: string): string[] {
  return server.events().filter((e) => e.name === name).map((e) =>
    String(e.event)
  );
}

// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;

/** Waits (bounded) until at least `n` audit events match. */
async function waitEvents(
  server: RunningServer,
  pred: (e: Record<string, unknown>) => boolean,
  n: number,
): Promise<Record<string, unknown>[]> {
  for (let i = 0; i < 100; i++) {
    const found = server.events().filter(pred);
    if (found.length >= n) return found;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`Fewer than ${n} matching audit events after 10 s`);
}

test("plain nc chat relays lines both ways with moat chat and the operator", async () => {
  requireTools();
  await using server = await startServer([]);
  const nc = lineClient(["nc", "-N", "127.0.0.1", String(server.port)]);
  const framed = await chatClient(server.port);
  try {
    nc.send("hello from nc\n");
    const atOp = await server.stdout.waitFor(
      (l) => l.endsWith("] hello from nc"),
      15_000,
      "nc line at operator",
    );
    const { name } = senderOf(atOp);
    assert.equal(
      await framed.out.waitFor((l) => l.endsWith("] hello from nc")),
      atOp,
    );

    framed.say("hi plain client");
    const atNc = await nc.out.waitFor(
      (l) => l.endsWith("] hi plain client"),
      15_000,
      "framed line at nc",
    );
    assert.match(
      atNc,
      new RegExp(`^\\[${framed.name} 127\\.0\\.0\\.1:\\d+\\] hi plain client$`),
    );

    server.child.stdin!.write("operator speaking\n");
    assert.equal(
      await nc.out.waitFor((l) => l.includes("operator speaking")),
      "[operator] operator speaking",
    );

    // A sender never hears its own line.
    assert.ok(!nc.out.lines.some((l) => l.includes("hello from nc")));
    assert.equal(await nc.quit(), 0);
    await server.waitEvent(
      (e) => e.event === "closed" && e.name === name,
      "nc closed",
    );
    assert.deepEqual(eventsOf(server, name), ["accepted", "chat", "closed"]);
    const chat = server.events().find((e) =>
      e.event === "chat" && e.name === name
    )!;
    assert.equal(chat.text, "hello from nc");
  } finally {
    assert.equal(await framed.quit(), 0);
  }
});

test("plain nc hears joins and leaves from [server], and /who lists the members to it alone", async () => {
  requireTools();
  await using server = await startServer([]);
  const nc = lineClient(["nc", "-N", "127.0.0.1", String(server.port)]);
  try {
    nc.send("here\n");
    const { name, addr } = senderOf(
      await server.stdout.waitFor((l) => l.endsWith("] here")),
    );
    const ncTag = `${name} (${addr})`;
    const framed = await chatClient(server.port);
    const joined = await nc.out.waitFor(
      (l) => l.includes("joined"),
      15_000,
      "the framed client's join at nc",
    );
    assert.match(joined, PRESENCE);
    const framedTag = joined.slice("[server] ".length, -" joined".length);
    assert.ok(framedTag.startsWith(`${framed.name} (`), joined);
    nc.send("/who\n");
    assert.equal(
      await nc.out.waitFor((l) => l.includes("members"), 15_000, "the list"),
      `[server] 2 members: ${ncTag}, ${framedTag}`,
    );
    // The framed client's next line is the next thing said: /who was not relayed.
    nc.send("after\n");
    assert.equal(
      await framed.out.waitFor((l) => l.endsWith("] after")),
      `[${name} ${addr}] after`,
    );
    assert.deepEqual(framed.out.lines, [`[${name} ${addr}] after`]);
    assert.equal(await framed.quit(), 0);
    assert.equal(
      await nc.out.waitFor((l) => l.endsWith(" left"), 15_000, "the leave"),
      `[server] ${framedTag} left`,
    );
    assert.deepEqual(nc.out.lines, [
      `[server] ${framedTag} joined`,
      `[server] 2 members: ${ncTag}, ${framedTag}`,
      `[server] ${framedTag} left`,
    ]);
    assert.deepEqual(
      server.events().filter((e) => e.event === "chat").map((e) => e.text),
      ["here", "after"],
    );
    assert.ok(!server.stdout.lines.some((l) => l.includes("/who")));
  } finally {
    assert.equal(await nc.quit(), 0);
  }
});

test("plain socat and a telnet-style client chat with each other, CRLF stripped", async () => {
  requireTools();
  await using server = await startServer([]);
  const so = lineClient(["socat", "-", `TCP:127.0.0.1:${server.port}`]);
  const raw = new RawClient(server.port);
  try {
    await raw.connected;
    // Each joins the chat with its first message (no newline from the telnet-style one).
    raw.write("telnet here");
    await server.stdout.waitFor(
      (l) => l.endsWith("] telnet here"),
      15_000,
      "telnet line at operator",
    );
    so.send("from socat\r\n");
    const atOp = await server.stdout.waitFor(
      (l) => l.includes("from socat"),
      15_000,
      "socat line at operator",
    );
    assert.match(atOp, /^\[[0-9a-z]{4}-c\d+ 127\.0\.0\.1:\d+\] from socat$/);
    await raw.waitText(
      (t) => t.includes("] from socat\n"),
      15_000,
      "socat line at the telnet-style client",
    );

    raw.write("from telnet"); // no newline: the quiet spell completes it
    const atSo = await so.out.waitFor(
      (l) => l.includes("from telnet"),
      15_000,
      "telnet line at socat",
    );
    assert.match(atSo, /^\[[0-9a-z]{4}-c\d+ 127\.0\.0\.1:\d+\] from telnet$/);
    assert.equal(await so.quit(), 0);
  } finally {
    raw.destroy();
  }
});

test("serve --reply answers nc, socat, telnet-style and framed chat lines", async () => {
  requireTools();
  using tmp = tempDir();
  // 3,000 lines from one peer, every one in the audit log: no chat or audit
  // rate (their limits are tested in tests/server_chat_test.ts and
  // tests/e2e_hostile_test.ts).
  await using server = await startServer([
    "--reply",
    "PONG",
    "--chat-rate",
    "0",
    "--audit-rate",
    "0",
  ]);
  const p = server.port;

  const viaNc = await sh(`printf 'hello\\n' | nc -N 127.0.0.1 ${p}`, {
    cwd: tmp.dir,
  });
  assert.equal(viaNc.code, 0, viaNc.stderr);
  assert.equal(viaNc.text, "[server] PONG\n");

  // Replies still queued when the client's EOF arrives are written before the close.
  const many = await sh(`seq 1 3000 | nc -N 127.0.0.1 ${p}`, { cwd: tmp.dir });
  assert.equal(many.code, 0, many.stderr);
  assert.equal(many.text, "[server] PONG\n".repeat(3000));

  const viaSocat = await sh(`printf 'hello\\n' | socat - TCP:127.0.0.1:${p}`, {
    cwd: tmp.dir,
  });
  assert.equal(viaSocat.code, 0, viaSocat.stderr);
  assert.equal(viaSocat.text, "[server] PONG\n");

  // A classic client: one write, no newline, then it waits for the answer.
  const raw = new RawClient(p);
  try {
    await raw.connected;
    // Answered by the quiet spell while the client keeps its side open.
    raw.write("are you there?");
    assert.equal(
      await raw.waitText((t) => t.endsWith("\n"), 10_000, "the reply"),
      "[server] PONG\n",
    );
    raw.write("again\r\n");
    await raw.waitText(
      (t) => t === "[server] PONG\n[server] PONG\n",
      10_000,
      "the second reply",
    );
  } finally {
    raw.destroy();
  }

  const framed = await chatClient(p);
  framed.say("framed hello");
  assert.equal(
    await framed.out.waitFor((l) => l.includes("PONG")),
    "[server] PONG",
  );
  assert.equal(await framed.quit(), 0);

  const chats = server.events().filter((e) => e.event === "chat").map((e) =>
    e.text
  );
  assert.equal(chats.length, 3005);
  assert.deepEqual(chats.filter((t) => !/^\d+$/.test(String(t))).sort(), [
    "again",
    "are you there?",
    "framed hello",
    "hello",
    "hello",
  ]);
});

test("FILE: over nc and socat sends the raw bytes, 100 MiB included, and is audited", async () => {
  requireTools();
  using tmp = tempDir();
  const root = path.join(tmp.dir, "root");
  const out = path.join(tmp.dir, "out");
  fs.mkdirSync(root);
  fs.mkdirSync(out);
  fs.writeFileSync(path.join(root, "notes.txt"), "plain notes\nline two\n");
  writeRandomFile(path.join(root, "big.bin"), 100 * MIB, 7);
  const bigSum = await sha256File(path.join(root, "big.bin"));
  await using server = await startServer(["--root", root]);
  const p = server.port;

  // The README one-liners, verbatim apart from the port.
  const oneLiners: [string, string, string][] = [
    [
      `printf 'FILE:notes.txt\\n' | nc 127.0.0.1 ${p} > notes.txt`,
      "notes.txt",
      "notes.txt",
    ],
    [
      `printf 'FILE:notes.txt\\n' | nc -N 127.0.0.1 ${p} > notes2.txt`,
      "notes2.txt",
      "notes.txt",
    ],
    [
      `printf 'FILE:notes.txt\\n' | socat -t 30 - TCP:127.0.0.1:${p} > notes3.txt`,
      "notes3.txt",
      "notes.txt",
    ],
    [
      `printf 'FILE:big.bin\\n' | nc -N 127.0.0.1 ${p} > big-nc.bin`,
      "big-nc.bin",
      "big.bin",
    ],
    [
      `printf 'FILE:big.bin\\n' | socat -t 30 - TCP:127.0.0.1:${p} > big-socat.bin`,
      "big-socat.bin",
      "big.bin",
    ],
    [
      `printf 'FILE:big.bin\\n' | socat -,ignoreeof TCP:127.0.0.1:${p} > big-socat2.bin`,
      "big-socat2.bin",
      "big.bin",
    ],
  ];
  for (const [command, saved, source] of oneLiners) {
    const r = await sh(command, { cwd: out, timeoutS: 60 });
    assert.equal(r.code, 0, `${command}: ${r.stderr}`);
    const want = source === "big.bin"
      ? bigSum
      : await sha256File(path.join(root, source));
    assert.equal(await sha256File(path.join(out, saved)), want, command);
    if (source === "big.bin") {
      // deno-lint-ignore no-console
      console.error(
        `${command.split(" > ")[0]}: 100 MiB in ${r.ms.toFixed(0)} ms`,
      );
    }
  }

  // A slow reader still gets every byte (socat's own -t is an idle bound).
  const slow = await sh(
    `printf 'FILE:big.bin\\n' | socat -t 30 - TCP:127.0.0.1:${p} | (sleep 2; sha256sum)`,
    { cwd: out, timeoutS: 60 },
  );
  assert.equal(slow.text.split(" ")[0], bigSum);

  const finished = server.events().filter((e) => e.event === "get_finished");
  assert.equal(finished.length, oneLiners.length + 1);
  const name = String(finished.at(-1)!.name);
  await server.waitEvent(
    (e) => e.event === "closed" && e.name === name,
    "closed after the file",
  );
  assert.deepEqual(eventsOf(server, name), [
    "accepted",
    "get_started",
    "get_finished",
    "closed",
  ]);
  const started = server.events().find((e) =>
    e.event === "get_started" && e.name === name
  )!;
  assert.equal(started.mode, "plain");
  assert.equal(started.path, "big.bin");
  assert.equal(finished.at(-1)!.bytes, 100 * MIB);
  const closed = server.events().find((e) =>
    e.event === "closed" && e.name === name
  )!;
  assert.equal(closed.reason, "file sent");
});

test("FILE: without a newline is served to clients that wait for the close", async () => {
  requireTools();
  using tmp = tempDir();
  const body = "no newline needed\n".repeat(1000);
  fs.writeFileSync(path.join(tmp.dir, "doc.txt"), body);
  await using server = await startServer(["--root", tmp.dir]);

  const raw = new RawClient(server.port);
  try {
    await raw.connected;
    raw.write("FILE:doc.txt");
    assert.ok(
      await raw.waitClosed(10_000),
      "server did not close after the file",
    );
    assert.equal(raw.text, body);
  } finally {
    raw.destroy();
  }

  const viaNc = await sh(
    `printf 'FILE:doc.txt' | nc 127.0.0.1 ${server.port}`,
    { cwd: tmp.dir },
  );
  assert.equal(viaNc.code, 0);
  assert.equal(viaNc.text, body);
});

test("a peer not on the allowlist reads one ERR ACCESS_DENIED line from nc", async () => {
  requireTools();
  using tmp = tempDir();
  await using server = await startServer(["--allow", "127.0.0.2"]);
  for (const input of ["hello\\n", "FILE:notes.txt\\n", ""]) {
    const r = await sh(`printf '${input}' | nc 127.0.0.1 ${server.port}`, {
      cwd: tmp.dir,
      timeoutS: 10,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.text, "ERR ACCESS_DENIED access refused by server\n");
  }
  const refused = server.events().filter((e) => e.event === "refused");
  assert.equal(refused.length, 3);
  assert.ok(
    !server.events().some((e) => e.event === "accepted" || e.event === "chat"),
  );
});

test("a plain line over --max-line is refused with one ERR line; one at the limit passes", async () => {
  requireTools();
  using tmp = tempDir();
  await using server = await startServer(["--max-line", "64"]);
  const atLimit = "a".repeat(64);
  const r = await sh(
    `printf '${atLimit}\\n${
      "b".repeat(65)
    }\\nnever relayed\\n' | nc -N 127.0.0.1 ${server.port}`,
    { cwd: tmp.dir, timeoutS: 10 },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.equal(
    r.text,
    "ERR LINE_TOO_LONG Chat line exceeds the limit of 64 bytes\n",
  );
  await server.stdout.waitFor(
    (l) => l.endsWith(`] ${atLimit}`),
    10_000,
    "the line at the limit",
  );
  const closed = await server.waitEvent((e) => e.event === "closed", "closed");
  assert.equal(closed.reason, "chat line too long");
  assert.deepEqual(
    server.events().filter((e) => e.event === "chat").map((e) => e.text),
    [atLimit],
  );

  // A huge line with no newline at all is refused as soon as it passes the limit.
  const big = await sh(
    `head -c 3000000 /dev/zero | tr '\\0' x | nc 127.0.0.1 ${server.port}`,
    {
      cwd: tmp.dir,
      timeoutS: 15,
    },
  );
  assert.equal(
    big.text,
    "ERR LINE_TOO_LONG Chat line exceeds the limit of 64 bytes\n",
  );
  assert.ok(!server.stdout.lines.some((l) => l.includes("xxx")));
});

test("forged senders from plain clients arrive escaped under their real tag", async () => {
  requireTools();
  await using server = await startServer([]);
  const sender = lineClient(["nc", "-N", "127.0.0.1", String(server.port)]);
  const listener = lineClient(["nc", "-N", "127.0.0.1", String(server.port)]);
  const framed = await chatClient(server.port);
  try {
    listener.send("listening\n");
    await server.stdout.waitFor(
      (l) => l.endsWith("] listening"),
      15_000,
      "listener joined",
    );
    sender.send("first\n");
    const { name, addr } = senderOf(
      await server.stdout.waitFor((l) => l.endsWith("] first")),
    );
    const tag = `[${name} ${addr}] `;
    const attempts: [string, string][] = [
      ["x\r[operator] fake\x1b[2J\n", "x\\r[operator] fake\\e[2J"],
      ["[operator] trust me\n", "[operator] trust me"],
      [
        `\x1b[1A\x1b[2K[c1 127.0.0.1:1] moved\n`,
        "\\e[1A\\e[2K[c1 127.0.0.1:1] moved",
      ],
      [
        "bell\x07 tab\t nul\x00 del\x7f bidi\u202e back\\slash\n",
        "bell\\x07 tab\\t nul\\x00 del\\x7f bidi\\u{202e} back\\\\slash",
      ],
      ["crlf ends cleanly\r\n", "crlf ends cleanly"],
    ];
    for (const [sent] of attempts) sender.send(sent);
    for (const [, shown] of attempts) {
      const want = tag + shown;
      assert.equal(
        await listener.out.waitFor((l) => l === want, 15_000, shown),
        want,
      );
      assert.equal(
        await framed.out.waitFor((l) => l === want, 15_000, shown),
        want,
      );
      assert.equal(
        await server.stdout.waitFor((l) => l === want, 15_000, shown),
        want,
      );
    }
    for (
      const l of [
        ...listener.out.lines,
        ...framed.out.lines,
        ...server.stdout.lines,
      ]
    ) {
      assert.ok(!CONTROL.test(l), JSON.stringify(l));
      // Every line is a client's under its real tag, the operator's, or a
      // join/leave line from the server (which no client can write).
      assert.ok(
        l.startsWith("[operator] ") ||
          /^\[[0-9a-z]{4}-c\d+ 127\.0\.0\.1:\d+\] /.test(l) ||
          PRESENCE.test(l),
        JSON.stringify(l),
      );
    }
    // The audit log keeps the exact text, JSON-escaped.
    const texts = server.events().filter((e) =>
      e.event === "chat" && e.name === name
    ).map((e) => e.text);
    assert.ok(texts.includes("x\r[operator] fake\x1b[2J"));
  } finally {
    await sender.quit();
    await listener.quit();
    await framed.quit();
  }
});

test("serve --no-plain refuses nc, socat and silent clients with one ERR line; framed still works", async () => {
  requireTools();
  using tmp = tempDir();
  await using server = await startServer(["--no-plain"]);
  const want = "ERR PLAIN_DISABLED plain-text mode is off on this server\n";
  for (
    const command of [
      `printf 'hello\\n' | nc 127.0.0.1 ${server.port}`,
      `printf 'FILE:x\\n' | nc -N 127.0.0.1 ${server.port}`,
      `printf 'hello\\n' | socat - TCP:127.0.0.1:${server.port}`,
      // More than the server reads before refusing: the line must not be lost to a reset.
      `seq 1 50000 | nc 127.0.0.1 ${server.port}`,
    ]
  ) {
    const r = await sh(command, { cwd: tmp.dir, timeoutS: 10 });
    assert.equal(r.code, 0, `${command}: ${r.stderr}`);
    assert.equal(r.text, want, command);
  }
  // A client that waits to be spoken to is refused once detection gives up.
  const raw = new RawClient(server.port);
  try {
    await raw.connected;
    assert.ok(await raw.waitClosed(10_000), "silent client not closed");
    assert.equal(raw.text, want);
  } finally {
    raw.destroy();
  }
  const framed = await chatClient(server.port);
  assert.equal(await framed.quit(), 0);
  // The operator saw the framed client come and go, and nothing else: no
  // refused plain client ever reached the chat.
  const left = await server.stdout.waitFor(
    (l) => l.startsWith(`[server] ${framed.name} `) && l.endsWith(" left"),
    10_000,
    "the framed client's leave line",
  );
  const tag = left.slice("[server] ".length, -" left".length);
  assert.deepEqual(server.stdout.lines, [
    `[server] ${tag} joined`,
    `[server] ${tag} left`,
  ]);
  assert.match(tag, /^[0-9a-z]{4}-c\d+ \(127\.0\.0\.1:\d+\)$/);
  const refused = await waitEvents(
    server,
    (e) => e.reason === "plain-text client refused (--no-plain)",
    5,
  );
  assert.equal(refused.length, 5);
});

test("a silent plain client hears the operator and is closed by the idle timeout", async () => {
  requireTools();
  await using server = await startServer(["--idle-timeout", "2"]);
  const raw = new RawClient(server.port);
  try {
    await raw.connected;
    // Detection waits about a second; say it until the client hears it.
    let heard = false;
    for (let i = 0; i < 20 && !heard; i++) {
      server.child.stdin!.write("anyone?\n");
      heard = await raw.waitText((t) => t.includes("[operator] anyone?\n"), 300)
        .then(() => true, () => false);
    }
    assert.ok(heard, "the silent client never heard the operator");
    assert.ok(await raw.waitClosed(10_000), "idle client not closed");
    const closed = await server.waitEvent(
      (e) => e.event === "closed",
      "closed",
    );
    assert.equal(closed.reason, "idle timeout");
    assert.ok(!CONTROL.test(raw.text.replaceAll("\n", "")));
  } finally {
    raw.destroy();
  }
});
