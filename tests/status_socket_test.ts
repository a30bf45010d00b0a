/**
 * Tests of `lib/status_socket.ts` over real Unix sockets in temporary
 * directories, on the runtime running the tests: the socket's mode and
 * folder checks, stale and live sockets, the request/answer exchange and
 * its refusals, and the client's checks.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { AddressInUseError, ConnectError, MoatError } from "../lib/errors.ts";
import { getNet } from "../lib/net/mod.ts";
import type { Conn } from "../lib/net/types.ts";
import {
  defaultSocketPath,
  MAX_SOCKET_PATH_BYTES,
  requestStatus,
  StatusSocket,
  VAULT_SOCKET_NAME,
} from "../lib/status_socket.ts";
import { tempDir } from "./_e2e.ts";
import { within } from "./_server.ts";

const net = getNet();

/** A status socket answering `report`, closed on dispose. */
async function openSocket(
  file: string,
  report: () => unknown = () => ({ hello: "world" }),
  createDir = false,
) {
  const socket = await StatusSocket.open(net, {
    path: file,
    report,
    createDir,
  });
  return {
    socket,
    async [Symbol.asyncDispose]() {
      await socket.close();
    },
  };
}

/** Sends raw bytes to a socket (half-closing after them) and reads its whole answer. */
async function exchange(
  file: string,
  request: Uint8Array,
  halfClose = false,
): Promise<unknown> {
  const conn: Conn = await net.connectUnix({ path: file });
  try {
    await conn.write(request);
    if (halfClose) await conn.closeWrite();
    const buf = new Uint8Array(65536);
    let text = "";
    for (let i = 0; i < 100; i++) {
      const n = await within(conn.read(buf), "the answer");
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    assert.ok(text.endsWith("\n") && text.indexOf("\n") === text.length - 1);
    return JSON.parse(text);
  } finally {
    conn.close();
  }
}

const encoder = new TextEncoder();

test("StatusSocket answers one status request with one JSON line, on a socket of mode 0600", async () => {
  using dir = tempDir("moat-status-");
  const file = path.join(dir.dir, "moat.sock");
  let asked = 0;
  await using _ = await openSocket(file, () => ({ asked: ++asked }));
  const st = fs.lstatSync(file);
  assert.ok(st.isSocket());
  assert.equal(st.mode & 0o777, 0o600);
  assert.equal(st.uid, process.getuid!());
  // Nothing but the socket is left in the folder (the private one is gone).
  assert.deepEqual(fs.readdirSync(dir.dir), ["moat.sock"]);
  assert.deepEqual(await requestStatus(net, file), { asked: 1 });
  assert.deepEqual(await requestStatus(net, file), { asked: 2 });
});

test("StatusSocket refuses a request that is not a status request, with a reason", async () => {
  using dir = tempDir("moat-status-");
  const file = path.join(dir.dir, "moat.sock");
  await using _ = await openSocket(file);
  const rows: [string, string][] = [
    ["garbage\n", "Request is not one line of JSON"],
    ["[1,2]\n", "Request is not a JSON object"],
    ['{"request":"shutdown"}\n', 'Unknown request "shutdown"'],
    ["{}\n", "Unknown request (none)"],
    ["x".repeat(5000), "Request longer than 4096 bytes"],
  ];
  for (const [request, message] of rows) {
    const answer = await exchange(file, encoder.encode(request)) as {
      ok: boolean;
      error: { code: string; message: string };
    };
    assert.equal(answer.ok, false, request.slice(0, 20));
    assert.equal(answer.error.code, "ERR_PROTOCOL");
    assert.ok(answer.error.message.startsWith(message), answer.error.message);
  }
  // A request cut short by the client's half-close is still answered.
  const answer = await exchange(
    file,
    encoder.encode('{"request":"status"}'),
    true,
  );
  assert.deepEqual(answer, { ok: true, status: { hello: "world" } });
});

test("StatusSocket replaces a stale socket left by a dead server", async () => {
  using dir = tempDir("moat-status-");
  const file = path.join(dir.dir, "moat.sock");
  // A hard link keeps the socket file after its listener closed: stale.
  const old = await net.listenUnix({ path: path.join(dir.dir, "old") });
  fs.linkSync(path.join(dir.dir, "old"), file);
  old.close();
  await assert.rejects(net.connectUnix({ path: file }), ConnectError);
  await using _ = await openSocket(file);
  assert.deepEqual(await requestStatus(net, file), { hello: "world" });
});

test("StatusSocket refuses a path where another server answers, and leaves it working", async () => {
  using dir = tempDir("moat-status-");
  const file = path.join(dir.dir, "moat.sock");
  await using _ = await openSocket(file, () => "first");
  await assert.rejects(
    StatusSocket.open(net, { path: file, report: () => "second" }),
    (error: unknown) => {
      assert.ok(error instanceof AddressInUseError);
      assert.match(
        error.message,
        /^Cannot serve status on ".*moat\.sock": another moat serve is using it/,
      );
      return true;
    },
  );
  assert.equal(await requestStatus(net, file), "first");
  assert.deepEqual(fs.readdirSync(dir.dir), ["moat.sock"]);
});

test("StatusSocket refuses an insecure or unusable folder or path", async () => {
  using dir = tempDir("moat-status-");
  const open = dir.dir + "/open";
  fs.mkdirSync(open);
  fs.chmodSync(open, 0o777);
  const sticky = dir.dir + "/sticky";
  fs.mkdirSync(sticky);
  fs.chmodSync(sticky, 0o1777);
  const link = dir.dir + "/link";
  fs.symlinkSync(sticky, link);
  const plain = dir.dir + "/plain";
  fs.writeFileSync(plain, "");
  const rows: [string, RegExp][] = [
    [`${open}/moat.sock`, /is writable by every user \(mode 0777\)/],
    [`${link}/moat.sock`, /its folder ".*link" is a symbolic link/],
    [`${dir.dir}/missing/moat.sock`, /its folder: no such file or directory/],
    [`${plain}/moat.sock`, /"[^"]*plain" is not a directory/],
    [plain, /something that is not a socket is there/],
    [`${dir.dir}/${"x".repeat(MAX_SOCKET_PATH_BYTES)}`, /holds at most 107/],
  ];
  for (const [file, message] of rows) {
    await assert.rejects(
      StatusSocket.open(net, { path: file, report: () => 1 }),
      (error: unknown) => {
        assert.ok(error instanceof MoatError, String(error));
        assert.equal(error.code, "ERR_LISTEN");
        assert.match(error.message, message);
        assert.ok(error.message.startsWith("Cannot serve status on "));
        return true;
      },
      file,
    );
  }
  assert.equal(fs.readFileSync(plain, "utf8"), "");
  // A sticky world-writable folder (like /tmp) is safe: others cannot
  // remove or replace what is ours there.
  await using _ = await openSocket(`${sticky}/moat.sock`);
  assert.deepEqual(await requestStatus(net, `${sticky}/moat.sock`), {
    hello: "world",
  });
});

test("StatusSocket makes a missing default folder with mode 0700", async () => {
  using dir = tempDir("moat-status-");
  const file = path.join(dir.dir, "moat", "moat-4320.sock");
  await using _ = await openSocket(file, () => 7, true);
  assert.equal(fs.lstatSync(path.dirname(file)).mode & 0o777, 0o700);
  assert.equal(await requestStatus(net, file), 7);
});

test("StatusSocket.close removes its socket, but not one that replaced it", async () => {
  using dir = tempDir("moat-status-");
  const file = path.join(dir.dir, "moat.sock");
  const first = await StatusSocket.open(net, { path: file, report: () => 1 });
  await first.close();
  assert.equal(fs.existsSync(file), false);
  const second = await StatusSocket.open(net, { path: file, report: () => 2 });
  // Another socket is moved over the path (another server took it over).
  const other = await net.listenUnix({ path: path.join(dir.dir, "other") });
  fs.renameSync(path.join(dir.dir, "other"), file);
  await second.close();
  assert.ok(fs.lstatSync(file).isSocket());
  other.close();
});

test("requestStatus refuses what is not a live socket before sending anything", async () => {
  using dir = tempDir("moat-status-");
  const missing = path.join(dir.dir, "missing.sock");
  const plain = path.join(dir.dir, "plain");
  fs.writeFileSync(plain, "");
  const stale = path.join(dir.dir, "stale.sock");
  const old = await net.listenUnix({ path: path.join(dir.dir, "old") });
  fs.linkSync(path.join(dir.dir, "old"), stale);
  old.close();
  const rows: [string, RegExp][] = [
    [
      missing,
      /^No status socket at ".*missing\.sock": is moat serve running\?/,
    ],
    [plain, /^".*plain" is not a socket$/],
    [stale, /^Cannot connect to ".*stale\.sock": connection refused$/],
  ];
  for (const [file, message] of rows) {
    await assert.rejects(
      requestStatus(net, file),
      (error: unknown) => {
        assert.ok(error instanceof ConnectError, String(error));
        assert.match(error.message, message);
        return true;
      },
    );
  }
});

test("requestStatus gives up on a server that never answers, with ERR_TIMEOUT", async () => {
  using dir = tempDir("moat-status-");
  const file = path.join(dir.dir, "mute.sock");
  const mute = await net.listenUnix({ path: file });
  fs.chmodSync(file, 0o600);
  const held: Conn[] = [];
  const accepting = (async () => {
    for await (const conn of mute) held.push(conn);
  })();
  try {
    await assert.rejects(
      requestStatus(net, file, { timeoutMs: 200 }),
      (error: unknown) => {
        assert.ok(error instanceof MoatError);
        assert.equal(error.code, "ERR_TIMEOUT");
        assert.match(error.message, /did not answer within 200 ms$/);
        return true;
      },
    );
  } finally {
    mute.close();
    for (const conn of held) conn.close();
    await accepting;
  }
});

test("requestStatus reports a server's refusal and an answer that is not JSON", async () => {
  using dir = tempDir("moat-status-");
  const file = path.join(dir.dir, "odd.sock");
  const odd = await net.listenUnix({ path: file });
  const answers = [
    '{"ok":false,"error":{"code":"ERR_PROTOCOL","message":"no\\u001b[2J"}}\n',
    "<html>\n",
    "",
  ];
  const serving = (async () => {
    let i = 0;
    for await (const conn of odd) {
      // The request is read first: closing over unread input resets.
      await conn.read(new Uint8Array(4096));
      await conn.write(encoder.encode(answers[i++]!));
      await conn.closeWrite();
      conn.close();
    }
  })();
  try {
    await assert.rejects(requestStatus(net, file), /refused: no\\e\[2J$/);
    await assert.rejects(requestStatus(net, file), /did not answer with JSON/);
    await assert.rejects(requestStatus(net, file), /closed without answering/);
  } finally {
    odd.close();
    await serving;
  }
});

test("defaultSocketPath puts the socket beside the vault, else in the runtime folder", () => {
  assert.equal(
    defaultSocketPath({ vault: "v", port: 1, env: {} }),
    path.resolve("v", VAULT_SOCKET_NAME),
  );
  // A relative XDG_RUNTIME_DIR is invalid and ignored.
  assert.equal(
    defaultSocketPath({
      port: 9,
      env: { XDG_RUNTIME_DIR: "run" },
      uid: 1000,
      tmpdir: "/t",
    }),
    "/t/moat-1000/moat-9.sock",
  );
  assert.equal(
    defaultSocketPath({ port: 9, env: { XDG_RUNTIME_DIR: "/r" } }),
    "/r/moat/moat-9.sock",
  );
  assert.equal(
    defaultSocketPath({ port: 9, env: {}, uid: 0 }),
    "/run/moat/moat-9.sock",
  );
});
