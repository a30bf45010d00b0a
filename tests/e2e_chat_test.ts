import { test } from "node:test";
import assert from "node:assert/strict";
import { LineWatcher, runMoat, spawnMoat, startServer } from "./_e2e.ts";

/** A C0 control or DEL: what must never reach a terminal raw. */
// deno-lint-ignore no-control-regex -- matching controls is the point
const RAW_CONTROL = /[\x00-\x1f\x7f]/;

async function chatClient(port: number) {
  const child = spawnMoat(["chat", "--server", `127.0.0.1:${port}`]);
  const out = new LineWatcher(child.stdout!);
  const err = new LineWatcher(child.stderr!);
  const hello = await err.waitFor(
    (l) => l.includes("connected"),
    15_000,
    "chat connected",
  );
  const [, name, addr] = /as ([0-9a-z]{4}-c\d+) \(([^)]+)\)/.exec(hello)!;
  const exited = new Promise<number | null>((r) =>
    child.on("close", (c) => r(c))
  );
  return {
    child,
    out,
    err,
    name: name!,
    /** "cN (127.0.0.1:PORT)", as presence lines and /who name it. */
    tag: `${name} (${addr})`,
    say: (line: string) => child.stdin!.write(line + "\n"),
    async quit() {
      child.stdin!.end();
      const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

test("moat chat: two clients and the operator exchange tagged lines", async () => {
  await using server = await startServer([]);
  const a = await chatClient(server.port);
  const b = await chatClient(server.port);
  try {
    a.say("hello from a");
    const atB = await b.out.waitFor(
      (l) => l.includes("hello from a"),
      15_000,
      "a's line at b",
    );
    assert.match(
      atB,
      new RegExp(`^\\[${a.name} 127\\.0\\.0\\.1:\\d+\\] hello from a$`),
    );
    const atOp = await server.stdout.waitFor(
      (l) => l.includes("hello from a"),
      15_000,
      "a's line at operator",
    );
    assert.equal(atOp, atB);

    b.say("and b replies");
    await a.out.waitFor(
      (l) => l.endsWith("] and b replies"),
      15_000,
      "b's line at a",
    );

    server.child.stdin!.write("operator here\n");
    assert.equal(
      await a.out.waitFor((l) => l.includes("operator here")),
      "[operator] operator here",
    );
    assert.equal(
      await b.out.waitFor((l) => l.includes("operator here")),
      "[operator] operator here",
    );

    // A sender never sees its own line echoed.
    assert.ok(!a.out.lines.some((l) => l.includes("hello from a")));
    const chats = server.events().filter((e) => e.event === "chat");
    assert.ok(
      chats.some((e) => e.text === "hello from a" && e.name === a.name),
    );
  } finally {
    assert.equal(await a.quit(), 0);
    assert.equal(await b.quit(), 0);
  }
});

test("moat chat escapes control characters so no client can forge a sender or drive a terminal", async () => {
  await using server = await startServer([]);
  const a = await chatClient(server.port);
  const b = await chatClient(server.port);
  try {
    a.say("x\r[operator] fake\x1b[2J\x07\u202e");
    const got = await b.out.waitFor(
      (l) => l.includes("fake"),
      15_000,
      "forged line",
    );
    assert.equal(
      got,
      `[${a.name} ${
        got.split(" ")[1]!.replace("]", "")
      }] x\\r[operator] fake\\e[2J\\x07\\u{202e}`,
    );
    assert.ok(!RAW_CONTROL.test(got));
    const op = await server.stdout.waitFor((l) => l.includes("fake"));
    assert.ok(!RAW_CONTROL.test(op));
  } finally {
    await a.quit();
    await b.quit();
  }
});

test("moat chat exits with an error when the server goes away", async () => {
  const server = await startServer([]);
  const a = await chatClient(server.port);
  await server.stop();
  const exited = await new Promise<number | null>((r) => {
    if (a.child.exitCode !== null) return r(a.child.exitCode);
    a.child.on("close", (c) => r(c));
  });
  assert.equal(exited, 6);
  await a.err.waitFor((l) => /closed by server/.test(l));
});

test("moat chat fed by a pipe prints the server's --reply to its last line before exiting", async () => {
  await using server = await startServer(["--reply", "PONG"]);
  const r = await runMoat(["chat", "--server", `127.0.0.1:${server.port}`], {
    input: "hi\n",
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "[server] PONG\n");
  assert.match(
    r.stderr,
    /^moat: connected to 127\.0\.0\.1:\d+ as [0-9a-z]{4}-c\d+ /,
  );
  const said = await server.waitEvent((e) => e.event === "chat", "chat");
  assert.equal(said.text, "hi");
});

test("moat chat shows joins and leaves as [server] lines; /who answers the asker, or the operator, alone", async () => {
  await using server = await startServer([]);
  const a = await chatClient(server.port);
  const b = await chatClient(server.port);
  try {
    assert.equal(
      await a.out.waitFor((l) => l.includes("joined"), 15_000, "b's join"),
      `[server] ${b.tag} joined`,
    );
    for (const who of [a, b]) {
      await server.stdout.waitFor(
        (l) => l === `[server] ${who.tag} joined`,
        15_000,
        `${who.name}'s join at the operator`,
      );
    }
    const list = `[server] 2 members: ${a.tag}, ${b.tag}`;
    b.say("/who");
    assert.equal(
      await b.out.waitFor((l) => l.includes("members"), 15_000, "b's list"),
      list,
    );
    server.child.stdin!.write("/who\n");
    assert.equal(
      await server.stdout.waitFor((l) => l.includes("members")),
      list,
    );
    // What each hears next is the next thing said: no /who was relayed.
    server.child.stdin!.write("sync\n");
    for (const who of [a, b]) {
      await who.out.waitFor((l) => l === "[operator] sync");
    }
    assert.deepEqual(a.out.lines, [
      `[server] ${b.tag} joined`,
      "[operator] sync",
    ]);
    assert.deepEqual(b.out.lines, [list, "[operator] sync"]);
    assert.equal(
      server.stdout.lines.filter((l) => l.includes("members")).length,
      1,
    );
    assert.ok(!server.stdout.lines.some((l) => l.includes("/who")));
    assert.equal(await b.quit(), 0);
    assert.equal(
      await a.out.waitFor((l) => l.includes("left"), 15_000, "b's leave"),
      `[server] ${b.tag} left`,
    );
    await server.stdout.waitFor((l) => l === `[server] ${b.tag} left`);
    assert.deepEqual(
      server.events().filter((e) => e.event === "chat"),
      [],
      "neither /who is a chat line",
    );
  } finally {
    await a.quit();
    await b.quit();
  }
});
