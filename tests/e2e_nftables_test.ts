/**
 * The kernel-level guard for real: `moat serve --print-nftables` output is
 * checked by `nft`, then loaded into a network namespace where moat serves,
 * and a refused address's connection must die in the kernel.
 *
 * Every packet stays inside two namespaces this file creates and deletes: the
 * server's and the client's, joined by a veth pair and addressed from the
 * documentation ranges (192.0.2.0/24, 2001:db8::/64), which are never routed.
 * The host's own namespace gets no address, route or rule.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { LineWatcher, moatCommand, tempDir } from "./_e2e.ts";

/** Why the kernel tests cannot run here, or undefined if they can. */
function whyNotKernel(): string | undefined {
  if (process.platform !== "linux") {
    return "skipped: nftables and network namespaces are Linux only";
  }
  if (process.getuid?.() !== 0) {
    return "skipped: not root; checking or loading nftables rules and creating network namespaces need root";
  }
  if (!works("nft", ["--version"])) {
    return "skipped: nft not found (apt-get install nftables)";
  }
  return undefined;
}

/** Why the namespace test cannot run here, or undefined if it can. */
function whyNotNamespaces(): string | undefined {
  const kernel = whyNotKernel();
  if (kernel !== undefined) return kernel;
  if (!works("ip", ["-V"])) {
    return "skipped: ip not found (apt-get install iproute2)";
  }
  if (!works("socat", ["-V"])) {
    return "skipped: socat not found (apt-get install socat)";
  }
  return undefined;
}

function works(cmd: string, args: string[]): boolean {
  const r = spawnSync(cmd, args, { stdio: "ignore", timeout: 10_000 });
  return r.error === undefined && r.status === 0;
}

const noKernel = whyNotKernel() ?? false;
const noNamespaces = whyNotNamespaces() ?? false;

/** Runs a command to completion (bounded by a kill after `timeoutMs`). */
function run(
  argv: readonly string[],
  timeoutMs = 30_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(argv[0]!, argv.slice(1), {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs a command that must succeed; returns its stdout. */
function must(argv: readonly string[]): string {
  const r = spawnSync(argv[0]!, argv.slice(1), {
    encoding: "utf8",
    timeout: 30_000,
  });
  if (r.error !== undefined || r.status !== 0) {
    throw new Error(
      `${argv.join(" ")} failed (${
        r.error ?? `exit ${r.status}`
      }): ${r.stderr}`,
    );
  }
  return r.stdout;
}

/** `moat serve … --print-nftables`, run outside any namespace (it does not listen). */
async function printRuleset(args: readonly string[]): Promise<string> {
  const r = await run([...moatCommand(), "serve", ...args, "--print-nftables"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, "");
  return r.stdout;
}

// ---------------------------------------------------------------------------

test(
  "nft -c accepts every ruleset moat serve --print-nftables prints",
  { skip: noKernel },
  async () => {
    using dir = tempDir("moat-nft-");
    const file = path.join(dir.dir, "moat.nft");
    // ::/0 minus 1000::1, 2000::1 … 9000::1 is 1,119 networks: past the
    // limit, so the deny rules get sets of their own.
    const many = Array.from({ length: 9 }, (_, i) => `${i + 1}000::1`);
    const cases: string[][] = [
      [],
      ["--deny", "127.0.0.53"],
      ["--allow", "192.0.2.7"],
      [
        "--allow",
        "192.0.2.0/24,2001:db8::/32",
        "--deny",
        "192.0.2.9,2001:db8::9",
        "--port",
        "443",
        "--vault",
        path.join(dir.dir, "vault"),
        "--syslog-port",
        "6514",
      ],
      ["--allow", "192.0.2.1", "--deny", "192.0.2.0/24"],
      ["--allow", "0.0.0.0/0,::/0", ...many.flatMap((a) => ["--deny", a])],
    ];
    for (const args of cases) {
      const text = await printRuleset(["--root", dir.dir, ...args]);
      fs.writeFileSync(file, text);
      // -c: the kernel checks the whole transaction and commits nothing.
      const r = await run(["nft", "-c", "-f", file]);
      assert.equal(r.code, 0, `${args.join(" ")}\n${r.stderr}\n${text}`);
      assert.equal(r.stderr, "", text);
      if (args.includes("0.0.0.0/0,::/0")) assert.match(text, /@deny6 drop/);
    }
  },
);

// ---------------------------------------------------------------------------

/** Two fresh network namespaces joined by a veth pair; deleted on dispose. */
interface NamespacePair {
  server: string;
  client: string;
  [Symbol.dispose](): void;
}

/**
 * Creates the namespaces `moat-t-<random>-s` and `-c`. The veth pair is
 * created inside the server's namespace with its peer end placed straight in
 * the client's, so it never exists in the host's.
 */
function createNamespaces(): NamespacePair {
  const id = randomBytes(4).toString("hex");
  const server = `moat-t-${id}-s`;
  const client = `moat-t-${id}-c`;
  const made: string[] = [];
  const dispose = () => {
    for (const ns of made) {
      spawnSync("ip", ["netns", "delete", ns], { stdio: "ignore" });
    }
  };
  try {
    for (const ns of [server, client]) {
      must(["ip", "netns", "add", ns]);
      made.push(ns);
    }
    const sVeth = `mts${id}`;
    const cVeth = `mtc${id}`;
    must([
      ...["ip", "-n", server, "link", "add", sVeth, "type", "veth"],
      ...["peer", "name", cVeth, "netns", client],
    ]);
    const addrs: [string, string, string[]][] = [
      [server, sVeth, ["192.0.2.1/24", "2001:db8::1/64"]],
      // The second address of each family is the one the allowlist refuses;
      // it is deprecated so that the kernel never picks it as a source
      // address by itself (socat binds it explicitly).
      [client, cVeth, ["192.0.2.2/24", "2001:db8::2/64"]],
    ];
    for (const [ns, dev, list] of addrs) {
      for (const addr of list) {
        must([
          "ip",
          "-n",
          ns,
          "addr",
          "add",
          addr,
          "dev",
          dev,
          ..._nodad(addr),
        ]);
      }
      must(["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    for (const addr of ["192.0.2.3/24", "2001:db8::3/64"]) {
      must([
        ...["ip", "-n", client, "addr", "add", addr, "dev", cVeth],
        ..._nodad(addr),
        ...["preferred_lft", "0"],
      ]);
    }
    must(["ip", "-n", server, "link", "set", sVeth, "up"]);
    must(["ip", "-n", client, "link", "set", cVeth, "up"]);
  } catch (err) {
    dispose();
    throw err;
  }
  return { server, client, [Symbol.dispose]: dispose };
}

/**
 * For an IPv6 address, skip duplicate address detection: no other host can
 * hold it, and the address is usable at once instead of after a second.
 */
function _nodad(addr: string): string[] {
  return addr.includes(":") ? ["nodad"] : [];
}

/** Waits until both ends of the veth pair have a carrier. */
async function waitForLink(ns: NamespacePair): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const up = [ns.server, ns.client].every((n) =>
      /\bLOWER_UP\b/.test(must(["ip", "-n", n, "-o", "link", "show", "up"]))
    );
    if (up) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error("the veth pair did not come up within 5 s");
}

/** Audit events parsed from moat's stderr lines. */
function events(audit: LineWatcher): Record<string, unknown>[] {
  return audit.lines.flatMap((line) => {
    try {
      return [JSON.parse(line)];
    } catch {
      return [];
    }
  });
}

/** `moat serve` inside the server namespace, stopped on dispose. */
async function serveIn(ns: string, args: readonly string[]) {
  const child = spawn("ip", ["netns", "exec", ns, ...moatCommand(), ...args], {
    stdio: ["pipe", "pipe", "pipe"],
    env: { ...process.env, NO_COLOR: "1" },
  });
  const audit = new LineWatcher(child.stderr!);
  child.stdout!.resume();
  const exited = new Promise<number | null>((resolve) =>
    child.on("close", (code) => resolve(code))
  );
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      process.kill(child.pid!, "SIGTERM");
    }
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
  };
  try {
    await Promise.race([
      audit.waitFor((l) => l.includes('"event":"listening"'), 30_000),
      exited.then((code) => {
        throw new Error(`moat serve exited with ${code}: ${audit.lines}`);
      }),
    ]);
  } catch (err) {
    await stop();
    throw err;
  }
  return { audit, [Symbol.asyncDispose]: stop };
}

const FAMILIES = [
  {
    name: "IPv4",
    host: "192.0.2.1",
    allowed: "192.0.2.2",
    refused: "192.0.2.3",
  },
  {
    name: "IPv6",
    host: "2001:db8::1",
    allowed: "2001:db8::2",
    refused: "2001:db8::3",
  },
] as const;

for (const family of FAMILIES) {
  test(
    `the nftables ruleset drops the SYN of a refused ${family.name} peer before moat sees it`,
    { skip: noNamespaces },
    async () => {
      using dir = tempDir("moat-nft-");
      const root = path.join(dir.dir, "share");
      fs.mkdirSync(root);
      fs.writeFileSync(path.join(root, "hello.txt"), "hello from the moat\n");
      using ns = createNamespaces();
      await waitForLink(ns);
      const bracket = (a: string) => a.includes(":") ? `[${a}]` : a;
      const ports = { main: 4320, syslog: 5514 };
      const flags = [
        ...["--host", family.host, "--port", String(ports.main)],
        ...["--root", root, "--allow", family.allowed],
        ...["--vault", path.join(dir.dir, "vault")],
        ...["--syslog-port", String(ports.syslog)],
      ];
      await using server = await serveIn(ns.server, ["serve", ...flags]);

      /** socat from the refused address: the server's first line, or the error. */
      const fromRefused = (port: number) =>
        run([
          ...["ip", "netns", "exec", ns.client, "socat", "-T2", "-"],
          `TCP:${bracket(family.host)}:${port},bind=${
            bracket(family.refused)
          },connect-timeout=2`,
        ], 15_000);
      const refusedLines = () =>
        events(server.audit).filter((e) =>
          e.event === "refused" &&
          String(e.peer).startsWith(`${bracket(family.refused)}:`)
        );
      const nft = (...args: string[]) =>
        must(["ip", "netns", "exec", ns.server, "nft", ...args]);

      // Without the ruleset, moat itself refuses the address on both ports
      // (this is what the kernel must take over below).
      for (const port of [ports.main, ports.syslog]) {
        const r = await fromRefused(port);
        assert.equal(
          r.stdout,
          "ERR ACCESS_DENIED access refused by server\n",
          r.stderr,
        );
      }
      await server.audit.waitFor(
        () => refusedLines().length === 2,
        15_000,
        "two refused lines",
      );

      // Load the ruleset twice (a reload must work) next to a table of
      // someone else's, which must survive.
      nft("add", "table", "inet", "bystander");
      nft("add", "chain", "inet", "bystander", "keep");
      const file = path.join(dir.dir, "moat.nft");
      fs.writeFileSync(file, await printRuleset(flags));
      nft("-f", file);
      nft("-f", file);
      assert.match(nft("list", "tables"), /^table inet bystander$/m);
      assert.match(nft("list", "table", "inet", "moat"), /jump guard/);
      assert.equal(
        nft("list", "tables").split("\n").filter((l) => l !== "").length,
        2,
      );

      // The refused address now gets no answer at all: its SYN is dropped.
      for (const port of [ports.main, ports.syslog]) {
        const r = await fromRefused(port);
        assert.notEqual(r.code, 0);
        assert.equal(r.stdout, "");
        assert.match(r.stderr, /timed out/i);
      }

      // The allowed address still gets its file. Its audit lines come after
      // any line the dropped attempts could have caused, so once they are
      // there, the absence of a new refused line is a fact, not a race.
      const out = path.join(dir.dir, "got.txt");
      const got = await run([
        ...["ip", "netns", "exec", ns.client, ...moatCommand()],
        ...["get", "FILE:hello.txt", "--server"],
        `${bracket(family.host)}:${ports.main}`,
        ...["-o", out, "--timeout", "10"],
      ]);
      assert.equal(got.code, 0, got.stderr);
      assert.equal(fs.readFileSync(out, "utf8"), "hello from the moat\n");
      await server.audit.waitFor(
        (l) => l.includes('"event":"get_finished"'),
        15_000,
        "get_finished",
      );
      const finished = events(server.audit).find((e) =>
        e.event === "get_finished"
      )!;
      assert.match(String(finished.peer), /^\S+:\d+$/);
      assert.ok(
        String(finished.peer).startsWith(`${bracket(family.allowed)}:`),
        `the get came from ${finished.peer}`,
      );
      assert.equal(refusedLines().length, 2, server.audit.lines.join("\n"));

      // Remove the ruleset: moat refuses the address itself again.
      nft("delete", "table", "inet", "moat");
      const again = await fromRefused(ports.main);
      assert.equal(
        again.stdout,
        "ERR ACCESS_DENIED access refused by server\n",
        again.stderr,
      );
      await server.audit.waitFor(
        () => refusedLines().length === 3,
        15_000,
        "a third refused line",
      );
    },
  );
}
