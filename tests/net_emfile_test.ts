/**
 * Tests for listeners at the file descriptor limit (`lib/net/_fd_reserve.ts`
 * and the accept paths of `lib/net/deno.ts` and `lib/net/bun.ts`): the
 * reserve in-process, then a listener in a child process (`_net_child.ts`,
 * on the runtime running the tests) whose limit is 64 descriptors, exhausted
 * with connections from here. Loopback only.
 *
 * @module
 */

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import process from "node:process";
import * as tls from "node:tls";
import { createSelfSignedCert } from "../lib/cert.ts";
import { getNet } from "../lib/net/mod.ts";
import type { AcceptErrorEvent } from "../lib/net/types.ts";
import {
  DescriptorReserve,
  isOutOfDescriptors,
} from "../lib/net/_fd_reserve.ts";
import { cpuSeconds } from "../bench/_util.ts";
import { tempDir } from "./_e2e.ts";
import { within } from "./_server.ts";

/** Bounds every wait in this file: a hang fails the test instead of stalling it. */
const TIMEOUT_MS = 30_000;
/** The child's descriptor limit. */
const LIMIT = 64;
/** More connections than the child can hold (it needs some descriptors of its own). */
const MAX_HELD = 200;
/** Child heartbeats (100 ms each) over which its CPU time is measured. */
const TICKS = 20;
/** A child spinning through those ticks uses about 2 s of CPU; an idle one, hundredths. */
const MAX_CPU_SECONDS = 0.5;

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
const CHILD = path.join(ROOT, "tests", "_net_child.ts");
/** What the child answers while out of descriptors. */
const BUSY_LINE = "ERR BUSY server busy: out of file descriptors\n";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

describe("DescriptorReserve", () => {
  test("isOutOfDescriptors is true for EMFILE and ENFILE only", () => {
    assert.equal(
      isOutOfDescriptors(Object.assign(new Error(), { code: "EMFILE" })),
      true,
    );
    assert.equal(
      isOutOfDescriptors(Object.assign(new Error(), { code: "ENFILE" })),
      true,
    );
    assert.equal(
      isOutOfDescriptors(Object.assign(new Error(), { code: "ENOBUFS" })),
      false,
    );
    assert.equal(isOutOfDescriptors(new Error("Too many open files")), false);
  });

  test("DescriptorReserve reports an episode once, answers BUSY, and recovers by itself", async () => {
    const events: AcceptErrorEvent[] = [];
    let recovered!: () => void;
    const done = new Promise<void>((resolve) => recovered = resolve);
    const reserve = new DescriptorReserve({
      where: "127.0.0.1:1",
      onAcceptError: (event) => {
        events.push(event);
        if (event.kind === "recovered") recovered();
      },
      busyNotice: encoder.encode(BUSY_LINE),
      watch: false,
    });
    const listener = await getNet().listen({ hostname: "127.0.0.1", port: 0 });
    try {
      // Connected before the episode starts: the refusal below then follows
      // the failures in the same turn, before the recheck timer can end the
      // episode (under load, a connect made after it sometimes came late).
      const accepted = listener[Symbol.asyncIterator]().next();
      const client = await getNet().connect(listener.addr);
      const conn = (await accepted).value!;
      // The first failure releases the spare; later ones have none to release.
      assert.equal(reserve.exhaust("Cannot accept: too many open files"), true);
      assert.equal(
        reserve.exhaust("Cannot accept: too many open files"),
        false,
      );
      assert.equal(reserve.exhausted, true);
      await reserve.refuse(conn);
      const buf = new Uint8Array(128);
      let text = "";
      for (
        let n = await client.read(buf);
        n !== null;
        n = await client.read(buf)
      ) {
        text += decoder.decode(buf.subarray(0, n));
      }
      client.close();
      assert.equal(text, BUSY_LINE);
      // Descriptors are plentiful here: the backoff's first checks end it.
      await within(done, "recovered event", TIMEOUT_MS);
      assert.equal(reserve.exhausted, false);
      assert.deepEqual(events.map((e) => e.kind), ["exhausted", "recovered"]);
      assert.match(events[0]!.message, /^Cannot accept: too many open files: /);
      assert.equal(events[1]!.kind === "recovered" && events[1]!.busy, 1);
    } finally {
      reserve.close();
      listener.close();
    }
  });

  test("DescriptorReserve ends an episode of another cause at the next accept", () => {
    const events: AcceptErrorEvent[] = [];
    const reserve = new DescriptorReserve({
      where: "127.0.0.1:1",
      onAcceptError: (event) => events.push(event),
      watch: false,
    });
    try {
      // Not EMFILE: the spare stays, and no descriptor check can end it.
      assert.equal(
        reserve.exhaust("Cannot accept: no buffer space", false),
        false,
      );
      assert.equal(reserve.exhausted, true);
      reserve.accepted();
      assert.equal(reserve.exhausted, false);
      assert.deepEqual(events.map((e) => e.kind), ["exhausted", "recovered"]);
      assert.match(events[0]!.message, /retrying with backoff$/);
    } finally {
      reserve.close();
    }
  });
});

/** The JSON lines of the child's stdout, with waiters. */
class ChildEvents {
  readonly events: Record<string, unknown>[] = [];
  #waiters: {
    pred: (e: Record<string, unknown>) => boolean;
    resolve: (e: Record<string, unknown>) => void;
  }[] = [];
  #buf = "";

  constructor(child: ChildProcess) {
    child.stdout!.setEncoding("utf8").on("data", (data: string) => {
      this.#buf += data;
      for (
        let i = this.#buf.indexOf("\n");
        i >= 0;
        i = this.#buf.indexOf("\n")
      ) {
        const event = JSON.parse(this.#buf.slice(0, i));
        this.#buf = this.#buf.slice(i + 1);
        this.events.push(event);
        this.#waiters = this.#waiters.filter((w) => {
          if (!w.pred(event)) return true;
          w.resolve(event);
          return false;
        });
      }
    });
  }

  /** The first event from now on (or already seen, with `past`) matching `pred`. */
  next(
    pred: (e: Record<string, unknown>) => boolean,
    what: string,
    past = true,
  ): Promise<Record<string, unknown>> {
    const seen = past ? this.events.find(pred) : undefined;
    if (seen !== undefined) return Promise.resolve(seen);
    return within(
      new Promise((resolve) => this.#waiters.push({ pred, resolve })),
      what,
      TIMEOUT_MS,
    );
  }

  count(name: string): number {
    return this.events.filter((e) => e.event === name).length;
  }
}

/** Everything a client receives until the server closes, or the error that ended it. */
function readUntilClosed(socket: net.Socket): Promise<string> {
  let text = "";
  socket.setEncoding("utf8").on("data", (data: string) => text += data);
  return within(
    new Promise((resolve) => {
      socket.on("error", () => {});
      socket.on("close", () => resolve(text));
    }),
    "the server to answer or close",
    TIMEOUT_MS,
  );
}

/** Sends "ping\n" and waits for "pong\n", over TLS or not. */
function ping(port: number, secure: boolean): Promise<string> {
  return within(
    new Promise((resolve, reject) => {
      const onReady = () => socket.write("ping\n");
      const socket: net.Socket = secure
        ? tls.connect(
          { host: "127.0.0.1", port, rejectUnauthorized: false },
          onReady,
        )
        : net.connect(port, "127.0.0.1", onReady);
      socket.setEncoding("utf8");
      socket.once("data", (data: string) => {
        socket.destroy();
        resolve(data);
      });
      socket.once("error", reject);
    }),
    "pong",
    TIMEOUT_MS,
  );
}

/** Starts the child with at most LIMIT descriptors. */
function spawnChild(args: string[]): ChildProcess {
  const runtime = navigator.userAgent.startsWith("Deno")
    ? [process.execPath, "run", "-A", CHILD]
    : [process.execPath, CHILD];
  // exec: the pid is the runtime's, for /proc/PID/stat.
  return spawn("bash", [
    "-c",
    `ulimit -n ${LIMIT} && exec "$0" "$@"`,
    ...runtime,
    ...args,
  ], { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] });
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  process.kill(child.pid!, "SIGTERM");
  await within(exited, "the child to exit", TIMEOUT_MS);
}

for (const secure of [false, true]) {
  const port = secure ? "a TLS port" : "a plain port";
  test(`Listener on ${port} keeps accepting at the descriptor limit: one report, BUSY, low CPU, recovery`, async () => {
    using dir = tempDir("moat-emfile-");
    const args = ["--busy", BUSY_LINE.trimEnd()];
    if (secure) {
      const made = await createSelfSignedCert({
        names: ["127.0.0.1"],
        days: 2,
      });
      fs.writeFileSync(path.join(dir.dir, "cert.pem"), made.cert);
      fs.writeFileSync(path.join(dir.dir, "key.pem"), made.key);
      args.push(
        "--tls",
        path.join(dir.dir, "cert.pem"),
        path.join(dir.dir, "key.pem"),
      );
    }
    const child = spawnChild(args);
    const held: net.Socket[] = [];
    try {
      const events = new ChildEvents(child);
      const listening = await events.next(
        (e) => e.event === "listening",
        "listening",
      );
      const childPort = Number(listening.port);

      // Silent connections, each held by the child, until it runs out.
      for (let k = 1; k <= MAX_HELD && events.count("exhausted") === 0; k++) {
        const socket = net.connect(childPort, "127.0.0.1");
        socket.on("error", () => {});
        held.push(socket);
        await events.next(
          (e) =>
            (e.event === "accepted" && Number(e.open) >= k) ||
            e.event === "exhausted",
          `connection ${k} accepted, or the exhausted event`,
        );
      }
      assert.equal(events.count("exhausted"), 1, "ran out of descriptors");
      assert.ok(held.length < MAX_HELD);

      // At the limit, a newcomer gets the BUSY line (or a close), never a hang.
      const answers: string[] = [];
      for (let i = 0; i < 3; i++) {
        answers.push(
          await readUntilClosed(net.connect(childPort, "127.0.0.1")),
        );
      }
      for (const answer of answers) {
        assert.ok(answer === BUSY_LINE || answer === "", answer);
      }
      assert.ok(answers.includes(BUSY_LINE), "the reserve answers BUSY");

      // Still at the limit (the held connections stay open): the child idles.
      const before = cpuSeconds(child.pid);
      const from = events.events.length;
      await events.next(
        (e) => e.event === "tick" && events.events.indexOf(e) >= from + TICKS,
        `${TICKS} ticks`,
        false,
      );
      const used = cpuSeconds(child.pid) - before;
      assert.ok(
        used < MAX_CPU_SECONDS,
        `child used ${used} s of CPU at the limit`,
      );

      // Descriptors free up: the listener recovers by itself and serves.
      for (const socket of held) socket.destroy();
      const recovered = await events.next(
        (e) => e.event === "recovered",
        "recovered",
      );
      assert.ok(Number(recovered.busy) >= answers.length);
      assert.equal(await ping(childPort, secure), "pong\n");
      assert.equal(events.count("exhausted"), 1);
      assert.equal(events.count("recovered"), 1);
    } finally {
      for (const socket of held) socket.destroy();
      await stopChild(child);
    }
  });
}
