import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import {
  compileAllowlist,
  formatCidr,
  parseIp,
  parseRule,
} from "../lib/allowlist.ts";
import { nftablesSets, renderNftables } from "../lib/nftables.ts";
import { UsageError } from "../lib/errors.ts";
import { VERSION } from "../lib/version.ts";

const MAIN = path.resolve(import.meta.dirname ?? ".", "..", "main.ts");

// ---------------------------------------------------------------------------
// A reading of the ruleset as the kernel would apply it to the first packet
// (a SYN, connection state "new") of a TCP connection. It knows only the
// statements the generator writes and fails on any other, so a change in the
// output shape shows up here.

interface Ruleset {
  sets: Map<string, { family: 4 | 6; elements: string[] }>;
  /** The ports the input chain sends to the guard chain. */
  ports: number[];
  /** The guard chain's statements, comments dropped. */
  guard: string[];
}

function readRuleset(text: string): Ruleset {
  const sets = new Map<string, { family: 4 | 6; elements: string[] }>();
  for (const m of text.matchAll(/^\tset (\w+) \{\n([\s\S]*?)\n\t\}$/gm)) {
    const body = m[2]!;
    const type = /^\t\ttype (ipv4_addr|ipv6_addr)$/m.exec(body);
    assert.ok(type, `set ${m[1]} has a type`);
    assert.match(body, /^\t\tflags interval$/m);
    const elements = [...body.matchAll(/^\t\t\t(\S+),$/gm)].map((e) => e[1]!);
    sets.set(m[1]!, {
      family: type[1] === "ipv4_addr" ? 4 : 6,
      elements,
    });
  }
  const input = /^\tchain input \{\n([\s\S]*?)\n\t\}$/m.exec(text);
  assert.ok(input, "an input chain");
  const lines = input[1]!.split("\n").map((l) => l.trim());
  assert.equal(
    lines[0],
    "type filter hook input priority filter; policy accept;",
  );
  assert.equal(lines.length, 2, input[1]);
  const dport = /^tcp dport \{ ([0-9, ]+) \} jump guard$/.exec(lines[1]!);
  assert.ok(dport, lines[1]);
  const ports = dport[1]!.split(", ").map(Number);
  const guard = /^\tchain guard \{\n([\s\S]*?)\n\t\}$/m.exec(text);
  assert.ok(guard, "a guard chain");
  return {
    sets,
    ports,
    guard: guard[1]!.split("\n").map((l) => l.trim()).filter((l) =>
      !l.startsWith("#")
    ),
  };
}

/** Whether the kernel lets a new connection from `addr` to `port` through. */
function admits(rules: Ruleset, addr: string, port: number): boolean {
  if (!rules.ports.includes(port)) return true;
  const family = parseIp(addr)!.family;
  for (const statement of rules.guard) {
    if (statement === "ct state established,related accept") continue;
    if (statement === "drop") return false;
    const m = /^(ip|ip6) saddr @(\w+) (accept|drop)$/.exec(statement);
    assert.ok(m, `unknown statement ${JSON.stringify(statement)}`);
    if ((m[1] === "ip" ? 4 : 6) !== family) continue;
    const set = rules.sets.get(m[2]!);
    assert.ok(set, `set ${m[2]} is defined`);
    assert.equal(set.family, family, `set ${m[2]} family`);
    if (inRules(addr, set.elements)) return m[3] === "accept";
  }
  return true; // the chain falls through to the base chain's policy
}

function toBig(bytes: Uint8Array): bigint {
  let v = 0n;
  for (const b of bytes) v = (v << 8n) | BigInt(b);
  return v;
}

function fromBig(v: bigint, family: 4 | 6): string {
  const n = family === 4 ? 4 : 16;
  const bytes = new Uint8Array(n);
  for (let i = n - 1; i >= 0; i--) {
    bytes[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  const text = formatCidr({ family, bytes, prefix: n * 8 });
  return text.slice(0, text.lastIndexOf("/"));
}

function inRules(addr: string, rules: readonly string[]): boolean {
  const ip = parseIp(addr)!;
  return rules.some((r) => {
    const c = parseRule(r);
    if (c.family !== ip.family) return false;
    const shift = BigInt(ip.bytes.length * 8 - c.prefix);
    return (toBig(ip.bytes) >> shift) === (toBig(c.bytes) >> shift);
  });
}

/** The first, last and neighbouring addresses of every rule, and a few inside. */
function samples(rules: readonly string[]): string[] {
  const out = new Set<string>(["0.0.0.0", "127.0.0.1", "::", "::1", "::2"]);
  let x = 0x9e3779b9n;
  for (const rule of rules) {
    const cidr = parseRule(rule);
    const bits = cidr.family === 4 ? 32n : 128n;
    const max = (1n << bits) - 1n;
    const size = 1n << (bits - BigInt(cidr.prefix));
    const first = toBig(cidr.bytes);
    const last = first + size - 1n;
    for (
      const v of [first - 1n, first, first + 1n, last - 1n, last, last + 1n]
    ) {
      if (v >= 0n && v <= max) out.add(fromBig(v, cidr.family));
    }
    for (let k = 0; k < 8; k++) {
      x = (x * 6364136223846793005n + 1442695040888963407n) &
        ((1n << 64n) - 1n);
      out.add(fromBig(first + (((x << 64n) | x) % size), cidr.family));
    }
  }
  return [...out];
}

// ---------------------------------------------------------------------------

describe("nftablesSets", () => {
  const rows: {
    allow: string[];
    deny: string[];
    allow4: string[];
    allow6: string[];
  }[] = [
    { allow: [], deny: [], allow4: ["127.0.0.0/8"], allow6: ["::1/128"] },
    {
      allow: [],
      deny: ["::1", "127.0.0.0/9"],
      allow4: ["127.128.0.0/9"],
      allow6: [],
    },
    { allow: ["10.0.0.5"], deny: [], allow4: ["10.0.0.5/32"], allow6: [] },
    {
      allow: ["2001:db8::/32", "192.0.2.0/24"],
      deny: ["192.0.2.0/25", "2001:db8:8000::/33"],
      allow4: ["192.0.2.128/25"],
      allow6: ["2001:db8::/33"],
    },
    {
      allow: ["192.0.2.0/30", "::ffff:192.0.2.4/127"],
      deny: ["::ffff:192.0.2.1"],
      allow4: ["192.0.2.0/32", "192.0.2.2/31", "192.0.2.4/31"],
      allow6: [],
    },
    {
      allow: ["0.0.0.0/0", "::/0"],
      deny: ["128.0.0.0/1", "::/1"],
      allow4: ["0.0.0.0/1"],
      allow6: ["8000::/1"],
    },
    {
      allow: ["198.51.100.0/25", "198.51.100.128/25", "198.51.100.7"],
      deny: [],
      allow4: ["198.51.100.0/24"],
      allow6: [],
    },
    { allow: ["192.0.2.1"], deny: ["192.0.2.0/24"], allow4: [], allow6: [] },
  ];
  for (const { allow, deny, allow4, allow6 } of rows) {
    test(`nftablesSets lists the allowed prefixes for allow [${allow}] deny [${deny}]`, () => {
      const list = compileAllowlist({ allow, deny });
      assert.deepEqual(nftablesSets(list), {
        allow4,
        allow6,
        deny4: [],
        deny6: [],
        exact: true,
      });
    });
  }

  test("nftablesSets keeps deny rules in their own sets past maxCidrs", () => {
    const list = compileAllowlist({
      allow: ["::/0", "192.0.2.0/24"],
      deny: ["2001:db8::1", "192.0.2.0/26", "192.0.2.0/25"],
    });
    assert.equal(nftablesSets(list).allow6.length, 128);
    assert.deepEqual(nftablesSets(list, { maxCidrs: 100 }), {
      allow4: ["192.0.2.0/24"],
      allow6: ["::/0"],
      deny4: ["192.0.2.0/25"],
      deny6: ["2001:db8::1/128"],
      exact: false,
    });
  });
});

describe("renderNftables", () => {
  const configs: { allow: string[]; deny: string[] }[] = [
    { allow: [], deny: [] },
    { allow: [], deny: ["127.0.0.53"] },
    { allow: ["192.0.2.1"], deny: [] },
    { allow: ["192.0.2.0/24", "198.51.100.0/24"], deny: ["192.0.2.5"] },
    { allow: ["0.0.0.0/0", "::/0"], deny: ["192.0.2.0/24", "2001:db8::/32"] },
    { allow: ["2001:db8::/32", "fe80::/10"], deny: ["2001:db8:0:1::/64"] },
    { allow: ["::ffff:192.0.2.0/120"], deny: ["::ffff:192.0.2.9"] },
    { allow: ["192.0.2.13"], deny: ["192.0.2.0/24"] },
  ];
  for (const { allow, deny } of configs) {
    for (const maxCidrs of [undefined, 1]) {
      test(
        `renderNftables drops a new connection exactly when the guard refuses, allow [${allow}] deny [${deny}]${
          maxCidrs ? " with deny sets" : ""
        }`,
        () => {
          const list = compileAllowlist({ allow, deny });
          const text = renderNftables({
            allowlist: list,
            ports: [4320, 5514],
            ...(maxCidrs !== undefined && { maxCidrs }),
          });
          const rules = readRuleset(text);
          const all = [...list.allow, ...list.deny].map(formatCidr);
          for (const set of rules.sets.values()) all.push(...set.elements);
          let dropped = 0;
          for (const addr of samples(all)) {
            for (const port of [4320, 5514]) {
              const kernel = admits(rules, addr, port);
              assert.equal(
                kernel,
                list.check(addr),
                `${addr} port ${port}: kernel ${kernel}, guard ${
                  list.check(addr)
                }\n${text}`,
              );
              if (!kernel) dropped++;
            }
            // Other ports are not the guard's business.
            assert.equal(admits(rules, addr, 22), true);
          }
          assert.ok(dropped > 0, "some sampled peer is dropped");
        },
      );
    }
  }

  test("renderNftables replaces only its own table, creating it first so the delete works", () => {
    const text = renderNftables({
      allowlist: compileAllowlist({ allow: ["192.0.2.0/24"] }),
      ports: [4320],
    });
    const statements = text.split("\n").filter((l) =>
      l !== "" && !l.startsWith("#")
    );
    assert.deepEqual(statements.slice(0, 3), [
      "table inet moat {}",
      "delete table inet moat",
      "table inet moat {",
    ]);
    assert.equal(statements.at(-1), "}");
    // Nothing else at the top level: no other table, no flush ruleset.
    const topLevel = statements.filter((l) => !l.startsWith("\t"));
    assert.deepEqual(topLevel, [
      "table inet moat {}",
      "delete table inet moat",
      "table inet moat {",
      "}",
    ]);
    assert.ok(text.endsWith("}\n"));
  });

  test("renderNftables accepts established connections first and drops the rest, never rejects", () => {
    for (const maxCidrs of [undefined, 1]) {
      const text = renderNftables({
        allowlist: compileAllowlist({
          allow: ["192.0.2.0/24"],
          deny: ["192.0.2.5"],
        }),
        ports: [4320],
        ...(maxCidrs !== undefined && { maxCidrs }),
      });
      const { guard } = readRuleset(text);
      assert.equal(guard[0], "ct state established,related accept");
      assert.equal(guard.at(-1), "drop");
      const statements = text.split("\n").filter((l) =>
        !l.trim().startsWith("#")
      );
      assert.deepEqual(statements.filter((l) => /reject/.test(l)), []);
      if (maxCidrs === undefined) {
        assert.deepEqual(guard.slice(1, -1), [
          "ip saddr @allow4 accept",
          "ip6 saddr @allow6 accept",
        ]);
      } else {
        assert.deepEqual(guard.slice(1, -1), [
          "ip saddr @deny4 drop",
          "ip6 saddr @deny6 drop",
          "ip saddr @allow4 accept",
          "ip6 saddr @allow6 accept",
        ]);
        assert.match(text, /need too many networks to subtract/);
      }
    }
  });

  test("renderNftables guards each given port once, in order", () => {
    const ruleset = (ports: number[]) =>
      readRuleset(
        renderNftables({ allowlist: compileAllowlist({}), ports }),
      ).ports;
    assert.deepEqual(ruleset([4320]), [4320]);
    assert.deepEqual(ruleset([4320, 514]), [514, 4320]);
    assert.deepEqual(ruleset([4320, 4320]), [4320]);
    assert.deepEqual(ruleset([1, 65535]), [1, 65535]);
  });

  test("renderNftables refuses port 0, a port out of range and no port with a UsageError", () => {
    const allowlist = compileAllowlist({});
    const cases: [number[], RegExp][] = [
      [[0], /port 0: the port is not known until moat listens/],
      [[4320, 0], /port 0/],
      [[65536], /invalid port "65536"/],
      [[-1], /invalid port "-1"/],
      [[43.5], /invalid port "43.5"/],
      [[Number.NaN], /invalid port "NaN"/],
      [[], /no port given/],
    ];
    for (const [ports, message] of cases) {
      assert.throws(
        () => renderNftables({ allowlist, ports }),
        (err: unknown) =>
          err instanceof UsageError && message.test(err.message) &&
          !/[\n\r]/.test(err.message),
        String(ports),
      );
    }
  });

  test("renderNftables writes an empty set without an elements line and says nobody may connect", () => {
    const text = renderNftables({
      allowlist: compileAllowlist({
        allow: ["192.0.2.1"],
        deny: ["192.0.2.0/24"],
      }),
      ports: [4320],
    });
    assert.doesNotMatch(text, /elements/);
    assert.match(text, /^# Every allowed network is also denied/m);
    const rules = readRuleset(text);
    assert.deepEqual(rules.sets.get("allow4"), { family: 4, elements: [] });
    assert.equal(admits(rules, "192.0.2.1", 4320), false);
  });

  test("renderNftables says where its sets come from in the header", () => {
    const loopback = renderNftables({
      allowlist: compileAllowlist({}),
      ports: [4320],
      version: "9.9.9",
    });
    assert.match(
      loopback,
      /^# Generated by `moat serve --print-nftables` \(moat 9\.9\.9\)\.$/m,
    );
    assert.match(loopback, /^# No --allow given: loopback only/m);
    assert.match(loopback, /TCP port 4320:/);
    const files = renderNftables({
      allowlist: compileAllowlist({
        allow: ["192.0.2.0/24"],
        deny: ["192.0.2.7"],
      }),
      ports: [4320, 5514],
      fromAllowFiles: true,
    });
    assert.doesNotMatch(files, /loopback only/);
    assert.match(files, /TCP ports 4320, 5514:/);
    assert.match(files, /^# Deny rules \(192\.0\.2\.7\/32\) are subtracted/m);
    assert.match(files, /^# The sets were computed from the allow-file/m);
  });
});

// ---------------------------------------------------------------------------

/** A fresh temporary folder, removed on dispose. */
function tempDir(): { dir: string; [Symbol.dispose](): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-nft-"));
  return {
    dir,
    [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

function runServe(args: string[], cwd: string) {
  const runtime = navigator.userAgent.startsWith("Deno")
    ? ["run", "-A", MAIN]
    : [MAIN];
  return spawnSync(process.execPath, [...runtime, "serve", ...args], {
    cwd,
    timeout: 30_000,
    encoding: "utf8",
  });
}

test("moat serve --print-nftables prints the ruleset for both ports and exits 0", () => {
  using dir = tempDir();
  fs.writeFileSync(path.join(dir.dir, "peers.txt"), "198.51.100.0/24\n");
  const r = runServe([
    "--port",
    "4999",
    "--allow",
    "192.0.2.0/24",
    "--allow-file",
    "peers.txt",
    "--deny",
    "192.0.2.9",
    "--vault",
    "vault",
    "--syslog-port",
    "6514",
    "--print-nftables",
  ], dir.dir);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, "");
  assert.equal(
    r.stdout,
    renderNftables({
      allowlist: compileAllowlist({
        allow: ["192.0.2.0/24", "198.51.100.0/24"],
        deny: ["192.0.2.9"],
      }),
      ports: [4999, 6514],
      fromAllowFiles: true,
      version: VERSION,
    }),
  );
  // It printed and exited: the vault it would open was never created.
  assert.equal(fs.existsSync(path.join(dir.dir, "vault")), false);
});

test("moat serve --print-nftables refuses port 0 and --print-systemd-unit with one line", () => {
  using dir = tempDir();
  for (
    const [args, message] of [
      [["--port", "0"], /^moat: Cannot print an nftables ruleset for port 0: /],
      [
        ["--print-systemd-unit"],
        /^moat: --print-systemd-unit and --print-nftables cannot be combined/,
      ],
      [["--allow", "192.0.2.1/24"], /^moat: Invalid rule: "192\.0\.2\.1\/24"/],
    ] as const
  ) {
    const r = runServe([...args, "--print-nftables"], dir.dir);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
  }
});
