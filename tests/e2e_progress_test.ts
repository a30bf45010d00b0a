/**
 * `moat get`'s progress bar on a real terminal: tmux gives moat an
 * 80-column pty, and its screen shows what a user would see.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import { moatCommand, startServer, tempDir, writeRandomFile } from "./_e2e.ts";
import { holdingRelay } from "./_relay.ts";

const skip = spawnSync("tmux", ["-V"]).error === undefined
  ? false
  : "skipped: tmux is not installed (apt-get install tmux)";

/** Quotes `word` for sh. */
function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Runs tmux on its own server (socket `socket`), failing on a non-zero exit. */
function tmux(socket: string, ...args: string[]): string {
  const r = spawnSync("tmux", ["-S", socket, ...args], { encoding: "utf8" });
  if (r.status !== 0) {
    throw new Error(`tmux ${args[0]} failed: ${r.stderr || r.error}`);
  }
  return r.stdout;
}

/**
 * The pane's lines, wrapped lines joined (`-J`), so a line that wrapped
 * shows at its full length; blank lines and trailing blanks dropped.
 */
function screen(socket: string): string[] {
  return tmux(socket, "capture-pane", "-p", "-J", "-t", "moat")
    .split("\n")
    .map((line) => line.trimEnd())
    .filter((line) => line !== "");
}

/** Polls the screen until `pred` holds for one of its lines (bounded). */
async function untilShown(
  socket: string,
  pred: (line: string) => boolean,
  what: string,
): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (let i = 0; i < 6_000 && Date.now() < deadline; i++) {
    if (screen(socket).some(pred)) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(
    `Timed out waiting for ${what}; screen:\n${screen(socket).join("\n")}`,
  );
}

const FRAME = /\[[#-]+\] +\d+% /;

test(
  "moat get on an 80-column terminal redraws its bar on one line and ends with the saved line",
  {
    skip,
  },
  async () => {
    using root = tempDir();
    using out = tempDir();
    using sockets = tempDir("moat-tmux-");
    // Long enough that a bar drawn without regard to the width (82 columns
    // and more) wraps, short enough that the saved line fits in 80.
    const name = "big-file.bin";
    writeRandomFile(path.join(root.dir, name), 8 << 20, 5);
    await using server = await startServer(["--root", root.dir]);
    // Held after 1 MiB: the bar is drawn mid-file before the rest comes.
    await using relay = await holdingRelay(server.port, 1 << 20);
    const socket = path.join(sockets.dir, "tmux.sock");
    const get = [
      ...moatCommand(),
      "get",
      `FILE:${name}`,
      "--server",
      `127.0.0.1:${relay.port}`,
    ].map(shellQuote).join(" ");
    tmux(
      socket,
      "new-session",
      "-d",
      "-x",
      "80",
      "-y",
      "24",
      "-s",
      "moat",
      `cd ${shellQuote(out.dir)} && ${get}; echo "exit=$?"; read x`,
    );
    try {
      await relay.held;
      await untilShown(socket, (l) => FRAME.test(l), "a progress frame");
      relay.release();
      await untilShown(socket, (l) => /^exit=\d+$/.test(l), "moat's exit");
      const lines = screen(socket);
      for (const line of lines) {
        assert.ok(line.length <= 80, `${line.length} columns: ${line}`);
      }
      assert.equal(
        lines.length,
        3,
        `one bar, saved, exit:\n${lines.join("\n")}`,
      );
      assert.match(lines[0]!, FRAME);
      assert.match(
        lines[0]!,
        /^big-file\.bin \[#+\] 100% 8\.0 MiB\/8\.0 MiB /,
      );
      assert.ok(lines[0]!.length <= 79, lines[0]);
      assert.match(
        lines[1]!,
        new RegExp(
          `^moat: saved ${name.replaceAll(".", "\\.")} \\(8388608 bytes`,
        ),
      );
      assert.equal(lines[2], "exit=0");
    } finally {
      tmux(socket, "kill-server");
    }
  },
);
