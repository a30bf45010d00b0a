/** Tests for cli/serve_log.ts and cli/banner.ts: where the audit log goes, its file, the banner. */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { AuditFile, chooseAuditLog } from "../cli/serve_log.ts";
import { type BannerInfo, formatBanner } from "../cli/banner.ts";
import { tempDir } from "./_e2e.ts";

test("chooseAuditLog sends the log to a file only when it would land on the chat screen", () => {
  const rows: [
    string | undefined,
    [boolean, boolean, boolean],
    string | undefined,
  ][] = [
    // --log wins, whatever the terminals.
    ["/var/log/a.log", [true, true, true], "/var/log/a.log"],
    ["/var/log/a.log", [false, false, false], "/var/log/a.log"],
    ["-", [true, true, true], undefined],
    // No --log: a file when stderr and the chat share a terminal.
    [undefined, [true, true, true], "moat-audit.log"],
    [undefined, [true, false, true], "moat-audit.log"],
    [undefined, [false, true, true], "moat-audit.log"],
    // stderr redirected, or nothing else on a terminal: stderr.
    [undefined, [true, true, false], undefined],
    [undefined, [false, false, true], undefined],
    [undefined, [false, false, false], undefined],
  ];
  for (const [log, [stdin, stdout, stderr], file] of rows) {
    const chosen = chooseAuditLog(log, { stdin, stdout, stderr });
    assert.equal(
      chosen.file,
      file,
      JSON.stringify({ log, stdin, stdout, stderr }),
    );
    assert.equal(chosen.byDefault, log === undefined && file !== undefined);
  }
});

test("AuditFile writes to the moved file until reopen, then to a new one at the path", () => {
  using tmp = tempDir();
  const file = path.join(tmp.dir, "audit.log");
  const log = new AuditFile(file, "--log");
  log.write("one");
  fs.renameSync(file, `${file}.1`);
  log.write("two");
  log.reopen();
  log.write("three");
  log.close();
  assert.equal(fs.readFileSync(`${file}.1`, "utf8"), "one\ntwo\n");
  assert.equal(fs.readFileSync(file, "utf8"), "three\n");
  assert.equal(fs.statSync(file).mode & 0o777 & ~0o640, 0);
});

test("AuditFile keeps writing to the old file when the path cannot be opened again", () => {
  using tmp = tempDir();
  const dir = path.join(tmp.dir, "logs");
  fs.mkdirSync(dir);
  const file = path.join(dir, "audit.log");
  const log = new AuditFile(file, "--log");
  log.write("before");
  fs.renameSync(file, path.join(tmp.dir, "moved.log"));
  fs.rmSync(dir, { recursive: true });
  assert.throws(() => log.reopen(), {
    name: "UsageError",
    message: `Cannot open --log "${file}": no such file or directory`,
  });
  log.write("after");
  log.close();
  assert.equal(
    fs.readFileSync(path.join(tmp.dir, "moved.log"), "utf8"),
    "before\nafter\n",
  );
});

test("AuditFile refuses a path it cannot open with one line naming it", () => {
  using tmp = tempDir();
  assert.throws(
    () => new AuditFile(path.join(tmp.dir, "no", "such.log"), '--log "x"'),
    {
      name: "UsageError",
      message: 'Cannot open --log "x": no such file or directory',
    },
  );
});

const INFO: BannerInfo = {
  version: "0.1.0",
  root: "/srv/files",
  addrs: ["[::]:4320"],
  allow:
    "allowing 3 rules (10.0.0.0/8, 192.168.1.0/24, 2001:db8::/32), denying 1 rule (10.0.0.13/32)",
  tls: true,
  clientAuth: ["token"],
  plain: false,
  vault: { dir: "/var/lib/moat/vault", sealed: true },
  auditFile: "/var/log/moat/audit.log",
  auditByDefault: false,
};

test("formatBanner wraps every value under its label to the width", () => {
  for (const columns of [40, 60, 80, 120]) {
    const lines = formatBanner(INFO, { columns });
    for (const l of lines) assert.ok(l.length <= columns, `${columns}: ${l}`);
    const allow = lines.findIndex((l) => l.startsWith("  allow "));
    const continued = [];
    for (let i = allow + 1; lines[i]!.startsWith(" ".repeat(14)); i++) {
      continued.push(lines[i]!.trim());
    }
    assert.equal(
      [lines[allow]!.slice(14), ...continued].join(" "),
      INFO.allow,
    );
  }
  const lines = formatBanner(INFO);
  assert.ok(lines.includes("  security    TLS 1.3, token required"));
  assert.ok(lines.includes("  vault       /var/lib/moat/vault (sealed)"));
  assert.ok(lines.includes("  audit log   /var/log/moat/audit.log"));
  assert.equal(lines.join("\n").includes("\x1b"), false);
});

test("formatBanner says an unsealed vault loudly, in colour only when asked", () => {
  const unsealed = { ...INFO, vault: { dir: "/v", sealed: false } };
  const plain = formatBanner(unsealed);
  assert.ok(plain.includes("  vault       /v  UNSEALED"));
  assert.ok(plain.some((l) => l.startsWith("!! The vault is NOT sealed")));
  const coloured = formatBanner(unsealed, { color: true });
  const loud = coloured.filter((l) => l.startsWith("\x1b[1;31m"));
  assert.equal(loud.length, 3);
  for (const l of loud) assert.ok(l.endsWith("\x1b[0m"));
});

test("formatBanner escapes a root or vault path that could drive the terminal", () => {
  const lines = formatBanner({
    ...INFO,
    root: "/srv/\x1b[2Jx",
    vault: { dir: "/v\r\n", sealed: true },
  });
  const text = lines.join("\n");
  // deno-lint-ignore no-control-regex
  assert.equal(/[\x00-\x08\x0b-\x1f]/.test(text), false);
  assert.ok(text.includes("/srv/\\e[2Jx"));
  assert.ok(text.includes("/v\\r\\n (sealed)"));
});
