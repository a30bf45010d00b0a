import { describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  describeShipEvent,
  formatShipStatus,
  type SourceStatus,
  statePathOf,
} from "../cli/ship.ts";
import { defaultStatePath } from "../lib/ship/state.ts";

describe("formatShipStatus", () => {
  const one: SourceStatus[] = [{ name: "auth", lines: 12345, bytes: 1468006 }];
  const three: SourceStatus[] = [
    { name: "auth", lines: 12345, bytes: 1468006 },
    { name: "system", lines: 7, bytes: 700 },
    { name: "evil\x1b[2J\u202e", lines: 0, bytes: 0 },
  ];

  test("formatShipStatus shows the backlog and the acknowledged rate", () => {
    assert.equal(
      formatShipStatus(one, 523.4, 120),
      "moat: backlog 12,345 lines, 1.4 MiB; 523 lines/s acknowledged",
    );
    assert.equal(
      formatShipStatus(three, 0, 200),
      "moat: backlog 12,352 lines, 1.4 MiB (auth 12,345 lines, 1.4 MiB; " +
        "system 7 lines, 700 B; evil\\e[2J\\u{202e} 0 lines, 0 B); 0 lines/s acknowledged",
    );
  });

  test("formatShipStatus fits every terminal width and never shows a raw escape", () => {
    for (const sources of [one, three]) {
      let dropped = false;
      for (let columns = 1; columns <= 240; columns++) {
        const line = formatShipStatus(sources, 98765, columns);
        assert.ok(
          [...line].length <= Math.max(1, columns - 1),
          `${columns}: ${line}`,
        );
        // deno-lint-ignore no-control-regex
        assert.doesNotMatch(line, /[\x00-\x1f\x7f\u202e]/);
        if (columns >= 70) {
          assert.match(line, /^moat: backlog 12,3\d\d lines, 1\.4 MiB/);
        }
        if (!line.includes("(")) dropped = true;
      }
      assert.ok(dropped, "narrow terminals drop the per-source detail");
    }
  });
});

describe("describeShipEvent", () => {
  const backlog = { lines: 12345, bytes: 1468006 };

  test("describeShipEvent says the backlog in every retry line", () => {
    assert.equal(
      describeShipEvent({
        type: "disconnected",
        message: "Cannot connect to loghost:4320: connection refused",
        retryMs: 3200,
        connected: false,
      }, backlog),
      "server unreachable (Cannot connect to loghost:4320: connection refused); " +
        "retrying in 3.2 s; backlog 12,345 lines, 1.4 MiB",
    );
    assert.equal(
      describeShipEvent({
        type: "disconnected",
        message: "Connection closed by server",
        retryMs: 10_000,
        connected: true,
      }, { lines: 1, bytes: 10 }),
      "connection lost (Connection closed by server); retrying in 10 s; backlog 1 line, 10 B",
    );
  });

  test("describeShipEvent names the failed door and the next one, with several doors", () => {
    assert.equal(
      describeShipEvent({
        type: "disconnected",
        message: "Connection closed by server",
        retryMs: 0,
        connected: true,
        server: "a:4320",
        next: "[::1]:4320",
      }, backlog),
      "connection to a:4320 lost (Connection closed by server); trying [::1]:4320 now; " +
        "backlog 12,345 lines, 1.4 MiB",
    );
    assert.equal(
      describeShipEvent({
        type: "disconnected",
        message: "Cannot connect to b:4320: connection refused",
        retryMs: 400,
        connected: false,
        server: "b:4320",
        next: "a\x1b:4320",
      }, backlog),
      "b:4320 unreachable (Cannot connect to b:4320: connection refused); trying a\\e:4320 in 0.4 s; " +
        "backlog 12,345 lines, 1.4 MiB",
    );
    // One door: as before.
    assert.equal(
      describeShipEvent({
        type: "disconnected",
        message: "Connection closed by server",
        retryMs: 200,
        connected: true,
        server: "a:4320",
      }, backlog),
      "connection lost (Connection closed by server); retrying in 0.2 s; backlog 12,345 lines, 1.4 MiB",
    );
  });

  test("describeShipEvent gives a full spool's numbers so that they add up", () => {
    assert.equal(
      describeShipEvent({
        type: "full",
        usedBytes: 598881,
        maxBytes: 1048576,
        waitingLines: 5461,
        waitingBytes: 464185,
      }, backlog),
      "SPOOL FULL: 598,881 of 1,048,576 bytes in use and the next 5,461 lines need " +
        "464,185 more; reading is paused until the server acknowledges; no line is " +
        "dropped; backlog 12,345 lines, 1.4 MiB",
    );
    assert.equal(
      describeShipEvent({ type: "resumed" }, backlog),
      "spool has room again; reading resumed; backlog 12,345 lines, 1.4 MiB",
    );
  });

  test("describeShipEvent escapes what the server and the file system say", () => {
    const texts = [
      describeShipEvent({
        type: "connected",
        server: "h:1",
        peer: "p\x1b[2J",
        source: "s\u202e",
        lastSeq: 3,
      }, backlog),
      describeShipEvent({
        type: "disconnected",
        message: "bad\x1b]0;title\x07",
        retryMs: 200,
        connected: true,
      }, backlog),
      describeShipEvent({
        type: "follow",
        event: { type: "skipped", path: "/l/a\x1b", files: ["/l/a\x1b.1"] },
      }, backlog),
      describeShipEvent({
        type: "follow",
        event: { type: "rotated", path: "/l/\r.log", dev: 1, ino: 2 },
      }, backlog),
      describeShipEvent({
        type: "spool",
        event: { type: "checkpoint_failed", error: new Error("x\x1by") },
      }, backlog),
    ];
    for (const text of texts) {
      assert.ok(text !== undefined);
      // deno-lint-ignore no-control-regex
      assert.doesNotMatch(text, /[\x00-\x1f\x7f\u202e]/, text);
    }
    assert.equal(
      describeShipEvent({ type: "done", lastSeq: 1 }, backlog),
      undefined,
    );
  });
});

describe("statePathOf", () => {
  const server = "10.0.0.1:4320";
  const env = { HOME: "/home/ann" };

  test("statePathOf keeps a single source's default state where it was", () => {
    for (const source of ["journal", "web1", "a b/c"]) {
      assert.equal(
        statePathOf(source, { server, env }),
        defaultStatePath({ source, server, env }),
      );
    }
    assert.equal(
      statePathOf("auth", {
        server,
        env: { XDG_STATE_HOME: "/st", HOME: "/h" },
      }),
      defaultStatePath({
        source: "auth",
        server,
        env: { XDG_STATE_HOME: "/st" },
      }),
    );
  });

  test("statePathOf takes --state as given and puts the default names in --state-dir", () => {
    assert.equal(
      statePathOf("auth", { state: "/var/lib/s.json", server, env }),
      "/var/lib/s.json",
    );
    const inDir = statePathOf("auth", { stateDir: "/var/lib/ms", server, env });
    assert.equal(
      inDir,
      "/var/lib/ms/" +
        defaultStatePath({ source: "auth", server, env }).split("/").pop(),
    );
    assert.notEqual(
      inDir,
      statePathOf("auth", { stateDir: "/var/lib/ms", server: "x:1", env }),
    );
    assert.notEqual(
      inDir,
      statePathOf("kern", { stateDir: "/var/lib/ms", server, env }),
    );
  });
});
