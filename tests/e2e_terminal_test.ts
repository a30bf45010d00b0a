/**
 * `moat serve` on a terminal (cli/banner.ts, cli/serve_log.ts), driven in a
 * real tmux pane 80 columns wide: the banner shows, and no audit line ever
 * lands on the operator's chat screen.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { moatCommand, tempDir } from "./_e2e.ts";
import { connectFrom, readAudit, waitAudit, waitUntil } from "./_audit_file.ts";

const TMUX = ["/usr/bin/tmux", "/bin/tmux"].find((f) => fs.existsSync(f));

/** Quotes a word for sh. */
function shellWord(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** A tmux server of its own (its own socket), one window of 80×24. */
function tmuxPane(dir: string, command: string[]) {
  const socket = `moat-test-${process.pid}-${
    Math.random().toString(36).slice(2)
  }`;
  const tmux = (...args: string[]) => {
    const r = spawnSync(TMUX!, ["-L", socket, "-f", "/dev/null", ...args], {
      encoding: "utf8",
    });
    if (r.status !== 0) throw new Error(`tmux ${args[0]}: ${r.stderr}`);
    return r.stdout;
  };
  // NO_COLOR is unset in the pane: the loud lines are coloured, which
  // capture-pane (without -e) leaves out.
  // The pane stays after moat exits, so that its last screen can be read.
  tmux(
    "start-server",
    ";",
    "set-option",
    "-g",
    "remain-on-exit",
    "on",
    ";",
    "new-session",
    "-d",
    "-x",
    "80",
    "-y",
    "40",
    "-c",
    dir,
    `env -u NO_COLOR ${command.map(shellWord).join(" ")}`,
  );
  return {
    /** The pane's lines, history included, trailing blanks trimmed. */
    screen: () =>
      tmux("capture-pane", "-p", "-J", "-S", "-200").split("\n").map((l) =>
        l.trimEnd()
      ),
    keys: (...keys: string[]) => tmux("send-keys", ...keys),
    [Symbol.dispose]: () => {
      spawnSync(TMUX!, ["-L", socket, "kill-server"]);
    },
  };
}

test(
  "moat serve on a terminal prints a banner at 80 columns and keeps every audit line off the chat screen",
  {
    skip: TMUX === undefined && "tmux is not installed (scripts/deps.sh)",
  },
  async () => {
    using tmp = tempDir();
    const log = path.join(tmp.dir, "moat-audit.log");
    using pane = tmuxPane(tmp.dir, [
      ...moatCommand(),
      "serve",
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--vault",
      "vault",
    ]);
    const listening = await waitAudit(
      log,
      (e) => e.event === "listening",
      "listening",
    );
    const addr = (listening.addrs as string[])[0]!;
    const port = Number(addr.slice(addr.lastIndexOf(":") + 1));
    const banner = await waitUntil(() => {
      const lines = pane.screen();
      return lines.some((l) => l.startsWith("Type a line")) ? lines : undefined;
    }, "the banner");
    const start = banner.findIndex((l) => l.startsWith("moat "));
    assert.ok(start >= 0, banner.join("\n"));
    const root = String(listening.root);
    assert.match(banner[start]!, /^moat \S+ is serving /);
    assert.equal(banner[start]!.replace(/^moat \S+ is serving /, ""), root);
    const rows = banner.slice(start);
    assert.ok(rows.includes(`  listening   ${addr}`), rows.join("\n"));
    assert.ok(
      rows.includes(
        "  allow       no --allow given: loopback only (127.0.0.0/8, ::1/128)",
      ),
      rows.join("\n"),
    );
    assert.ok(
      rows.some((l) => l === `  vault       ${root}/vault  UNSEALED`),
      rows.join("\n"),
    );
    assert.ok(
      rows.some((l) => l.startsWith("!! The vault is NOT sealed")),
      rows.join("\n"),
    );
    assert.ok(
      rows.some((l) => l.startsWith(`  audit log   ${log}`)),
      rows.join("\n"),
    );
    for (const l of rows) assert.ok(l.length <= 80, `wider than 80: ${l}`);

    // A chat client talks; the operator answers from the pane.
    const client = await connectFrom(port, "127.0.0.1");
    client.socket.write("hello from a client\n");
    const said = await waitAudit(log, (e) => e.event === "chat", "chat");
    await waitUntil(
      () =>
        pane.screen().includes(
          `[${said.name} ${said.peer}] hello from a client`,
        ) || undefined,
      "the client's line on the chat screen",
    );
    pane.keys("hi from the operator", "Enter");
    await waitUntil(
      () =>
        client.received().includes("[operator] hi from the operator\n") ||
        undefined,
      "the operator's line at the client",
    );
    client.socket.end();
    await waitAudit(log, (e) => e.event === "closed", "closed");

    pane.keys("C-c");
    await waitAudit(log, (e) => e.event === "shutdown", "shutdown");
    const events = readAudit(log).map((e) => e.event);
    for (
      const e of ["vault_unsealed", "accepted", "chat", "closed", "signal"]
    ) {
      assert.ok(events.includes(e), `${e} is in the audit file`);
    }
    const screen = pane.screen();
    const json = screen.filter((l) =>
      l.includes('"event"') || l.startsWith("{")
    );
    assert.deepEqual(json, [], "no audit line on the chat screen");
  },
);
