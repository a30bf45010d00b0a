import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
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
import {
  computeIpAddressAllow,
  quoteSystemdArg,
  renderShipUnit,
  renderSystemdUnit,
  type ServeFlag,
  type ShipUnitOptions,
  type SystemdUnitOptions,
} from "../lib/systemd/mod.ts";
import { UsageError } from "../lib/errors.ts";

const MAIN = path.resolve(import.meta.dirname ?? ".", "..", "main.ts");

/** A fresh temporary folder, removed on dispose. */
function tempDir(): { dir: string; [Symbol.dispose](): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-systemd-"));
  return {
    dir,
    [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

// ---------------------------------------------------------------------------
// A reference parser for one ExecStart= line, written from systemd's rules
// (systemd.syntax(7) "Quoting", systemd.service(5) "Command lines", and
// config_parse_exec in src/core/load-fragment.c): words split on whitespace,
// "..." or '...' around a whole word, C escapes, then %% -> % (specifiers)
// and $$ -> $ (environment substitution). A bare % or $ fails the test,
// because systemd would expand it.

const ESCAPES: Record<string, string> = {
  a: "\x07",
  b: "\b",
  f: "\f",
  n: "\n",
  r: "\r",
  t: "\t",
  v: "\v",
  "\\": "\\",
  '"': '"',
  "'": "'",
  s: " ",
};

function expand(word: string): string {
  return word.replace(/%(.)|\$(.)|[%$]$/g, (m, pct, dol) => {
    if (pct === "%") return "%";
    if (dol === "$") return "$";
    throw new Error(`unescaped ${m} in ${JSON.stringify(word)}`);
  });
}

function parseExecStart(line: string): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < line.length) {
    while (line[i] === " " || line[i] === "\t") i++;
    if (i >= line.length) break;
    let word = "";
    let quote: string | undefined;
    if (line[i] === '"' || line[i] === "'") quote = line[i++];
    for (;;) {
      if (i >= line.length) {
        if (quote) throw new Error(`unbalanced quote in ${line}`);
        break;
      }
      const c = line[i]!;
      if (quote && c === quote) {
        i++;
        assert.ok(
          i >= line.length || line[i] === " ",
          "a closing quote ends the word",
        );
        break;
      }
      if (!quote && (c === " " || c === "\t")) break;
      if (c === "\\") {
        const e = line[i + 1]!;
        if (e === "x") {
          word += String.fromCharCode(parseInt(line.slice(i + 2, i + 4), 16));
          i += 4;
        } else {
          assert.ok(e in ESCAPES, `known escape \\${e}`);
          word += ESCAPES[e];
          i += 2;
        }
        continue;
      }
      assert.ok(
        quote || (c !== '"' && c !== "'"),
        "no quote inside a bare word",
      );
      word += c;
      i++;
    }
    assert.notEqual(
      !quote && word === ";",
      true,
      "a bare ; would split the command",
    );
    words.push(expand(word));
  }
  return words;
}

function execStartOf(unit: string): string[] {
  const line = unit.split("\n").find((l) => l.startsWith("ExecStart="));
  assert.ok(line, "unit has ExecStart=");
  return parseExecStart(line.slice("ExecStart=".length));
}

function settings(unit: string, key: string): string[] {
  return unit.split("\n").filter((l) => l.startsWith(`${key}=`)).map((l) =>
    l.slice(key.length + 1)
  );
}

const BINARY = { executable: "/usr/local/bin/moat" };

function unitFor(
  flags: ServeFlag[],
  extra: Partial<SystemdUnitOptions> = {},
): string {
  const allow: string[] = [];
  const deny: string[] = [];
  for (const f of flags) {
    if (f.name === "allow" && f.value) allow.push(f.value);
    if (f.name === "deny" && f.value) deny.push(f.value);
  }
  const portFlag = flags.find((f) => f.name === "port");
  return renderSystemdUnit({
    launcher: BINARY,
    flags,
    cwd: "/srv/moat",
    allowlist: compileAllowlist({ allow, deny }),
    port: portFlag?.value ? Number(portFlag.value) : 4320,
    maxConns: 512,
    ...extra,
  });
}

// ---------------------------------------------------------------------------

describe("quoteSystemdArg", () => {
  const cases: [string, string][] = [
    ["--root", "--root"],
    ["/srv/share", "/srv/share"],
    ["10.0.0.0/8,192.168.1.0/24", "10.0.0.0/8,192.168.1.0/24"],
    ["", '""'],
    ["a b", '"a b"'],
    ["100%", '"100%%"'],
    ["$HOME", '"$$HOME"'],
    ["${X}", '"$${X}"'],
    ['say "hi"', '"say \\"hi\\""'],
    ["back\\slash", '"back\\\\slash"'],
    [";", '";"'],
    ["line\nbreak\ttab\rcr", '"line\\nbreak\\ttab\\rcr"'],
    ["\x01\x7f", '"\\x01\\x7f"'],
    ["'single'", `"'single'"`],
    ["naïve ☃", '"naïve ☃"'],
  ];
  for (const [word, expected] of cases) {
    test(`quoteSystemdArg quotes ${JSON.stringify(word)}`, () => {
      assert.equal(quoteSystemdArg(word), expected);
    });
  }

  test("quoteSystemdArg round-trips through systemd's command-line rules", () => {
    const words = cases.map(([w]) => w).concat([
      "%n%%",
      "$$",
      "a;b",
      "-x",
      "@",
      "\\;",
      " lead",
      "trail ",
      '"',
      "'",
    ]);
    const line = words.map(quoteSystemdArg).join(" ");
    assert.deepEqual(parseExecStart(line), words);
  });
});

// ---------------------------------------------------------------------------

/** Address arithmetic for sampling. */
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

/** Boundary and pseudo-random addresses around every rule. */
function samples(rules: string[]): string[] {
  const out = new Set<string>([
    "0.0.0.0",
    "255.255.255.255",
    "127.0.0.1",
    "::",
    "::1",
    "::2",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
  ]);
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
    for (let k = 0; k < 16; k++) {
      x = (x * 6364136223846793005n + 1442695040888963407n) &
        ((1n << 64n) - 1n);
      const r = (x << 64n) | (x ^ 0x5deece66dn);
      out.add(fromBig(first + (r % size), cidr.family));
    }
  }
  return [...out];
}

function inRules(addr: string, rules: string[]): boolean {
  const ip = parseIp(addr)!;
  return rules.some((r) => {
    const c = parseRule(r);
    if (c.family !== ip.family) return false;
    const shift = BigInt(ip.bytes.length * 8 - c.prefix);
    return (toBig(ip.bytes) >> shift) === (toBig(c.bytes) >> shift);
  });
}

describe("computeIpAddressAllow", () => {
  const configs: { allow: string[]; deny: string[] }[] = [
    { allow: [], deny: [] },
    { allow: [], deny: ["127.0.0.53"] },
    { allow: ["10.0.0.5"], deny: [] },
    { allow: ["10.0.0.0/8", "192.168.1.0/24"], deny: ["10.0.0.5"] },
    {
      allow: ["10.0.0.0/8"],
      deny: ["10.128.0.0/9", "10.1.2.3", "10.1.2.0/30"],
    },
    { allow: ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3"], deny: [] },
    { allow: ["0.0.0.0/0", "::/0"], deny: ["192.0.2.0/24", "2001:db8::/32"] },
    { allow: ["2001:db8::/32", "fe80::/10"], deny: ["2001:db8:0:1::/64"] },
    { allow: ["::ffff:10.0.0.0/104"], deny: ["::ffff:10.9.9.9"] },
    { allow: ["192.168.1.13"], deny: ["192.168.1.0/24"] },
    { allow: ["192.168.0.0/16"], deny: ["192.168.0.0/16"] },
  ];
  for (const { allow, deny } of configs) {
    test(`computeIpAddressAllow matches the guard for allow [${allow}] deny [${deny}]`, () => {
      const list = compileAllowlist({ allow, deny });
      const { rules, exact } = computeIpAddressAllow(list);
      assert.equal(exact, true);
      // Every line is canonical text that systemd and the guard accept.
      for (const r of rules) assert.equal(formatCidr(parseRule(r)), r);
      const all = [...list.allow, ...list.deny].map(formatCidr).concat(rules);
      for (const addr of samples(all)) {
        assert.equal(
          inRules(addr, rules),
          list.check(addr),
          `${addr}: kernel ${inRules(addr, rules)}, guard ${list.check(addr)}`,
        );
      }
    });
  }

  test("computeIpAddressAllow lists loopback when no allow rule is given", () => {
    assert.deepEqual(computeIpAddressAllow(compileAllowlist({})), {
      rules: ["127.0.0.0/8", "::1/128"],
      exact: true,
    });
  });

  test("computeIpAddressAllow lists nothing when every allowed network is denied", () => {
    const list = compileAllowlist({
      allow: ["10.0.0.5"],
      deny: ["10.0.0.0/8"],
    });
    assert.deepEqual(computeIpAddressAllow(list), { rules: [], exact: true });
  });

  test("computeIpAddressAllow drops networks covered by another and sorts", () => {
    const list = compileAllowlist({
      allow: ["::1", "192.168.1.7", "10.1.0.0/16", "10.0.0.0/8", "10.0.0.0/8"],
    });
    assert.deepEqual(computeIpAddressAllow(list).rules, [
      "10.0.0.0/8",
      "192.168.1.7/32",
      "::1/128",
    ]);
  });

  test("computeIpAddressAllow falls back to the allow rules past maxRules", () => {
    const list = compileAllowlist({ allow: ["::/0"], deny: ["2001:db8::1"] });
    assert.equal(computeIpAddressAllow(list).rules.length, 128);
    assert.deepEqual(computeIpAddressAllow(list, { maxRules: 100 }), {
      rules: ["::/0"],
      exact: false,
    });
  });
});

// ---------------------------------------------------------------------------

describe("renderSystemdUnit", () => {
  test("renderSystemdUnit reproduces the serve flags with absolute paths", () => {
    const unit = unitFor([
      { name: "allow", value: "10.0.0.0/8" },
      { name: "port", value: "4500" },
      { name: "print-systemd-unit" },
      { name: "root", value: "share/../files" },
      { name: "allow-file", value: "peers.txt" },
      { name: "reply", value: 'away: back at 5, "$5" or 100%' },
      { name: "no-plain" },
      { name: "log", value: "/var/log/moat/audit.log" },
      { name: "vault", value: "vault" },
    ]);
    assert.deepEqual(execStartOf(unit), [
      "/usr/local/bin/moat",
      "serve",
      "--allow",
      "10.0.0.0/8",
      "--port",
      "4500",
      "--root",
      "/srv/moat/files",
      "--allow-file",
      "/srv/moat/peers.txt",
      "--reply",
      'away: back at 5, "$5" or 100%',
      "--no-plain",
      "--log",
      "/var/log/moat/audit.log",
      "--vault",
      "/srv/moat/vault",
    ]);
    assert.deepEqual(settings(unit, "ReadOnlyPaths"), [
      "/srv/moat/files /srv/moat/peers.txt",
    ]);
    assert.deepEqual(settings(unit, "ReadWritePaths"), ["/srv/moat/vault"]);
    assert.deepEqual(settings(unit, "LogsDirectory"), ["moat"]);
    assert.match(unit, /regenerate the unit whenever they change/);
  });

  test("renderSystemdUnit adds --root when none is given", () => {
    const unit = unitFor([]);
    assert.deepEqual(execStartOf(unit), [
      "/usr/local/bin/moat",
      "serve",
      "--root",
      "/srv/moat",
    ]);
    assert.deepEqual(settings(unit, "ReadWritePaths"), []);
  });

  test("renderSystemdUnit writes the guard's rules as IPAddressAllow lines", () => {
    const flags = [
      { name: "allow", value: "10.0.0.0/8,192.168.1.0/24" },
      { name: "deny", value: "10.0.0.5" },
    ];
    const unit = unitFor(flags);
    const list = compileAllowlist({
      allow: ["10.0.0.0/8,192.168.1.0/24"],
      deny: ["10.0.0.5"],
    });
    assert.deepEqual(settings(unit, "IPAddressDeny"), ["any"]);
    assert.deepEqual(
      settings(unit, "IPAddressAllow"),
      computeIpAddressAllow(list).rules,
    );
    assert.ok(!settings(unit, "IPAddressAllow").includes("10.0.0.5/32"));
    assert.match(unit, /# Deny rules \(10\.0\.0\.5\/32\) are subtracted above/);
    assert.deepEqual(settings(unitFor([]), "IPAddressAllow"), [
      "127.0.0.0/8",
      "::1/128",
    ]);
  });

  test("renderSystemdUnit runs as a dedicated user with least privilege", () => {
    const unit = unitFor([]);
    for (
      const line of [
        "User=moat",
        "Group=moat",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictAddressFamilies=AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "IPAddressDeny=any",
        "LimitNOFILE=1088",
      ]
    ) assert.ok(unit.split("\n").includes(line), line);
    assert.doesNotMatch(unit, /^(DynamicUser|MemoryDenyWriteExecute)=/m);
  });

  test("renderSystemdUnit grants CAP_NET_BIND_SERVICE only below port 1024", () => {
    const low = unitFor([{ name: "port", value: "443" }]);
    assert.deepEqual(settings(low, "AmbientCapabilities"), [
      "CAP_NET_BIND_SERVICE",
    ]);
    assert.deepEqual(settings(low, "CapabilityBoundingSet"), [
      "CAP_NET_BIND_SERVICE",
    ]);
    const any = unitFor([{ name: "port", value: "0" }], { port: 0 });
    assert.deepEqual(settings(any, "AmbientCapabilities"), [""]);
  });

  test("renderSystemdUnit binds paths in home folders into ProtectHome=tmpfs", () => {
    const unit = unitFor([
      { name: "root", value: "/home/ann/share" },
      { name: "log", value: "/root/moat.log" },
    ]);
    assert.deepEqual(settings(unit, "ProtectHome"), ["tmpfs"]);
    assert.deepEqual(settings(unit, "BindReadOnlyPaths"), ["/home/ann/share"]);
    assert.deepEqual(settings(unit, "BindPaths"), ["/root/moat.log"]);
    assert.deepEqual(settings(unit, "ReadWritePaths"), ["/root/moat.log"]);
  });

  test("renderSystemdUnit keeps the host's /tmp and /dev when a path is there", () => {
    const unit = unitFor([
      { name: "root", value: "/tmp/share" },
      { name: "log", value: "/dev/shm/moat.log" },
    ]);
    assert.deepEqual(settings(unit, "PrivateTmp"), ["no"]);
    assert.deepEqual(settings(unit, "PrivateDevices"), ["no"]);
  });

  test("renderSystemdUnit uses StateDirectory for a vault under /var/lib", () => {
    const unit = unitFor([{ name: "vault", value: "/var/lib/moat/vault" }]);
    assert.deepEqual(settings(unit, "StateDirectory"), ["moat/vault"]);
    assert.deepEqual(settings(unit, "ReadWritePaths"), []);
  });

  test("renderSystemdUnit quotes paths with spaces and percent signs", () => {
    const unit = unitFor([{ name: "root", value: "/srv/my files/100%" }]);
    assert.deepEqual(settings(unit, "ReadOnlyPaths"), [
      '"/srv/my files/100%%"',
    ]);
    assert.deepEqual(execStartOf(unit).slice(-2), [
      "--root",
      "/srv/my files/100%",
    ]);
  });

  test("renderSystemdUnit narrows Deno's permissions to the unit's paths and addresses", () => {
    const unit = unitFor([
      { name: "root", value: "share" },
      { name: "log", value: "/var/log/moat/audit.log" },
      { name: "vault", value: "/var/lib/moat" },
    ], {
      launcher: {
        executable: "/usr/bin/deno",
        script: "/opt/moat/main.ts",
        runtime: "deno",
      },
    });
    assert.deepEqual(execStartOf(unit).slice(0, 9), [
      "/usr/bin/deno",
      "run",
      "--no-prompt",
      "--allow-net=127.0.0.1:4320,[::1]:4320",
      "--allow-read=/srv/moat/share,/var/lib/moat",
      "--allow-env=MOAT_TOKEN",
      "--allow-write=/var/log/moat/audit.log,/var/lib/moat",
      "/opt/moat/main.ts",
      "serve",
    ]);
    assert.deepEqual(settings(unit, "CacheDirectory"), ["moat"]);
    assert.deepEqual(settings(unit, "RestrictAddressFamilies"), [
      "AF_INET AF_INET6 AF_UNIX",
    ]);
    const lan = unitFor([{ name: "allow", value: "10.0.0.0/8" }], {
      launcher: {
        executable: "/usr/bin/deno",
        script: "m.ts",
        runtime: "deno",
      },
    });
    assert.equal(execStartOf(lan)[3], "--allow-net=0.0.0.0:4320,[::]:4320");
    assert.equal(execStartOf(lan)[6], "/srv/moat/m.ts");
  });

  test("renderSystemdUnit covers TLS files, the token file and the syslog port", () => {
    const flags = [
      { name: "vault", value: "/var/lib/moat" },
      { name: "syslog-port", value: "514" },
      { name: "tls-cert", value: "tls/cert.pem" },
      { name: "tls-key", value: "tls/key.pem" },
      { name: "client-ca", value: "/etc/moat/ca.pem" },
      { name: "token-file", value: "/etc/moat/tokens" },
    ];
    const deno = {
      executable: "/usr/bin/deno",
      script: "/opt/moat/main.ts",
      runtime: "deno" as const,
    };
    const unit = unitFor(flags, { launcher: deno, extraPorts: [514] });
    const words = execStartOf(unit);
    assert.deepEqual(words.slice(3, 6), [
      "--allow-net=127.0.0.1:4320,[::1]:4320,127.0.0.1:514,[::1]:514",
      "--allow-read=/srv/moat,/srv/moat/tls/cert.pem,/srv/moat/tls/key.pem," +
      "/etc/moat/ca.pem,/etc/moat/tokens,/var/lib/moat",
      "--allow-write=/var/lib/moat",
    ]);
    assert.ok(!words.includes("--allow-env=MOAT_TOKEN"));
    assert.ok(words.includes("/srv/moat/tls/key.pem"));
    assert.deepEqual(settings(unit, "ReadOnlyPaths"), [
      "/srv/moat /srv/moat/tls/cert.pem /srv/moat/tls/key.pem /etc/moat/ca.pem /etc/moat/tokens",
    ]);
    assert.deepEqual(settings(unit, "AmbientCapabilities"), [
      "CAP_NET_BIND_SERVICE",
    ]);
    assert.deepEqual(settings(unit, "Description"), [
      "moat guarded socket server (port 4320, 514)",
    ]);
  });

  test("renderSystemdUnit lets the server reach its witnesses, by IP address only", () => {
    const flags = [
      { name: "allow", value: "10.0.0.0/8" },
      { name: "vault", value: "/var/lib/moat" },
      { name: "witness", value: "192.0.2.7:4321" },
      { name: "witness", value: "[2001:db8::7]" },
    ];
    const connects = [
      { hostname: "192.0.2.7", port: 4321 },
      { hostname: "2001:db8::7", port: 4321 },
    ];
    const unit = unitFor(flags, {
      connects,
      launcher: {
        executable: "/usr/bin/deno",
        script: "/opt/moat/main.ts",
        runtime: "deno",
      },
    });
    assert.deepEqual(settings(unit, "IPAddressAllow"), [
      "10.0.0.0/8",
      "192.0.2.7",
      "2001:db8::7",
    ]);
    assert.equal(
      execStartOf(unit)[3],
      "--allow-net=0.0.0.0:4320,[::]:4320,192.0.2.7:4321,[2001:db8::7]:4321",
    );
    assert.throws(
      () =>
        unitFor(flags, {
          connects: [{ hostname: "witness.example", port: 4321 }],
        }),
      (err) =>
        err instanceof UsageError && /not an IP address/.test(err.message),
    );
  });

  test("renderSystemdUnit runs a script under Bun without permission flags", () => {
    const unit = unitFor([], {
      launcher: {
        executable: "/usr/bin/bun",
        script: "/opt/moat/main.ts",
        runtime: "bun",
      },
    });
    assert.deepEqual(execStartOf(unit), [
      "/usr/bin/bun",
      "/opt/moat/main.ts",
      "serve",
      "--root",
      "/srv/moat",
    ]);
  });

  const bad: [string, Partial<SystemdUnitOptions>, RegExp][] = [
    [
      "a relative program",
      { launcher: { executable: "moat" } },
      /not absolute/,
    ],
    ["a quote in the program path", {
      launcher: { executable: '/opt/"m"/moat' },
    }, /quote/],
    ["a control character in a path", {
      flags: [{ name: "root", value: "/srv/a\nb" }],
    }, /control character/],
    ["a comma in a Deno path", {
      flags: [{ name: "root", value: "/srv/a,b" }],
      launcher: {
        executable: "/usr/bin/deno",
        script: "/m.ts",
        runtime: "deno",
      },
    }, /comma/],
    ["a colon in a bound home path", {
      flags: [{ name: "root", value: "/home/a:b" }],
    }, /contains ":"/],
  ];
  for (const [what, extra, message] of bad) {
    test(`renderSystemdUnit refuses ${what}`, () => {
      assert.throws(
        () => unitFor((extra.flags ?? []) as ServeFlag[], extra),
        (err: unknown) =>
          err instanceof UsageError && message.test(err.message),
      );
    });
  }
});

// ---------------------------------------------------------------------------

function systemdAnalyze(): string | undefined {
  if (process.platform !== "linux") return "skipped: not Linux";
  const r = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8" });
  if (r.error || r.status !== 0) {
    return "skipped: systemd-analyze is not installed (apt-get install systemd)";
  }
  return undefined;
}

const noAnalyze = systemdAnalyze();

test(
  "renderSystemdUnit output passes systemd-analyze verify",
  { skip: noAnalyze ?? false },
  () => {
    using dir = tempDir();
    const cases: ServeFlag[][] = [
      [],
      [
        { name: "allow", value: "10.0.0.0/8,2001:db8::/32" },
        { name: "deny", value: "10.0.0.5" },
        { name: "port", value: "443" },
        { name: "root", value: "/home/ann/my share" },
        { name: "reply", value: 'a "quoted" $HOME; 100% \\ \n ;' },
        { name: "log", value: "/var/log/moat/audit.log" },
        { name: "vault", value: "/srv/vault %n" },
      ],
      [{ name: "root", value: "/tmp/x" }, { name: "log", value: "/dev/shm/l" }],
    ];
    for (const [i, flags] of cases.entries()) {
      for (
        const launcher of [
          { executable: process.execPath },
          {
            executable: process.execPath,
            script: "/opt/moat/main.ts",
            runtime: "deno" as const,
          },
        ]
      ) {
        const unit = unitFor(flags, { launcher });
        const file = path.join(dir.dir, `moat${i}.service`);
        fs.writeFileSync(file, unit);
        const r = spawnSync("systemd-analyze", ["verify", "--man=no", file], {
          encoding: "utf8",
          timeout: 30_000,
        });
        assert.equal(r.status, 0, `${unit}\n${r.stderr}`);
        assert.equal(r.stderr, "", `${unit}\n${r.stderr}`);
      }
    }
  },
);

test("moat serve --print-systemd-unit prints the unit and does not listen", () => {
  using dir = tempDir();
  fs.mkdirSync(path.join(dir.dir, "share"));
  fs.writeFileSync(path.join(dir.dir, "peers.txt"), "# lab\n192.168.7.0/24\n");
  const runtime = navigator.userAgent.startsWith("Deno")
    ? ["run", "-A", MAIN]
    : [MAIN];
  const r = spawnSync(process.execPath, [
    ...runtime,
    "serve",
    "--port",
    "4999",
    "--root",
    "share",
    "--allow",
    "10.1.0.0/16",
    "--allow-file",
    "peers.txt",
    "--deny",
    "10.1.2.3",
    "--print-systemd-unit",
    "--reply",
    "hi $USER",
  ], { cwd: dir.dir, timeout: 30_000, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, "");
  const words = execStartOf(r.stdout);
  const serve = words.indexOf("serve");
  assert.ok(path.isAbsolute(words[0]!));
  const real = fs.realpathSync(dir.dir);
  assert.deepEqual(words.slice(serve), [
    "serve",
    "--port",
    "4999",
    "--root",
    path.join(real, "share"),
    "--allow",
    "10.1.0.0/16",
    "--allow-file",
    path.join(real, "peers.txt"),
    "--deny",
    "10.1.2.3",
    "--reply",
    "hi $USER",
  ]);
  const list = compileAllowlist({
    allow: ["10.1.0.0/16", "192.168.7.0/24"],
    deny: ["10.1.2.3"],
  });
  assert.deepEqual(
    settings(r.stdout, "IPAddressAllow"),
    computeIpAddressAllow(list).rules,
  );
  assert.ok(settings(r.stdout, "IPAddressAllow").includes("192.168.7.0/24"));
  assert.equal(
    r.stdout.endsWith("\n[Install]\nWantedBy=multi-user.target\n"),
    true,
  );
});

test("the ExecStart of moat serve --print-systemd-unit runs a working server", async () => {
  using dir = tempDir();
  fs.mkdirSync(path.join(dir.dir, "share"));
  fs.writeFileSync(path.join(dir.dir, "share", "hello.txt"), "hello unit\n");
  // A unit's write paths exist before it starts (ReadWritePaths= requires it).
  fs.mkdirSync(path.join(dir.dir, "vault"));
  const log = path.join(dir.dir, "audit.log");
  const runtime = navigator.userAgent.startsWith("Deno")
    ? ["run", "-A", MAIN]
    : [MAIN];
  const printed = spawnSync(process.execPath, [
    ...runtime,
    "serve",
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--root",
    "share",
    "--vault",
    "vault",
    "--log",
    "audit.log",
    "--print-systemd-unit",
  ], { cwd: dir.dir, timeout: 30_000, encoding: "utf8" });
  assert.equal(printed.status, 0, printed.stderr);
  // Under Deno this is `deno run --no-prompt --allow-net=127.0.0.1 …`: the
  // narrowed permissions must be enough to serve.
  const [cmd, ...args] = execStartOf(printed.stdout);
  const server = spawn(cmd!, args, { cwd: "/", stdio: "ignore" });
  try {
    let port = 0;
    for (let i = 0; i < 400 && port === 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      const text = fs.existsSync(log) ? fs.readFileSync(log, "utf8") : "";
      const m = /"event":"listening","addrs":\["127\.0\.0\.1:(\d+)"/.exec(text);
      if (m) port = Number(m[1]);
      assert.equal(server.exitCode, null, `server exited: ${text}`);
    }
    assert.notEqual(port, 0, "server listening within 20 s");
    const got = spawnSync(process.execPath, [
      ...runtime,
      "get",
      "FILE:hello.txt",
      "--server",
      `127.0.0.1:${port}`,
      "-o",
      path.join(dir.dir, "got.txt"),
    ], { timeout: 30_000, encoding: "utf8" });
    assert.equal(got.status, 0, got.stderr);
    assert.equal(
      fs.readFileSync(path.join(dir.dir, "got.txt"), "utf8"),
      "hello unit\n",
    );
  } finally {
    server.kill("SIGTERM");
    await new Promise((r) =>
      server.exitCode === null ? server.on("close", r) : r(null)
    );
  }
});

// ---------------------------------------------------------------------------
// The shipper's unit.

function shipUnit(extra: Partial<ShipUnitOptions> = {}): string {
  const inputs = extra.inputs ?? [
    { path: "/var/log/auth.log" },
    { path: "/var/log/syslog", name: "system" },
  ];
  return renderShipUnit({
    launcher: BINARY,
    flags: [],
    inputs,
    followed: inputs.map((i) => i.path),
    cwd: "/srv/moat",
    server: { hostname: "10.0.0.1", port: 4320 },
    serverAddresses: ["10.0.0.1"],
    ...extra,
  });
}

describe("renderShipUnit", () => {
  test("renderShipUnit reproduces the inputs and flags, with the server and state explicit", () => {
    const unit = shipUnit({
      inputs: [
        { path: "/var/log/auth.log" },
        { path: "/var/log/nginx/access.log", name: "nginx $x 100%" },
      ],
      followed: [
        "/var/log/auth.log",
        "/var/log/nginx/access.log",
        "/etc/moat/more/app.log",
      ],
      flags: [
        { name: "print-systemd-unit" },
        { name: "config", value: "ship.conf" },
        { name: "server", value: "loghost" },
        { name: "spool-size", value: "2097152" },
        { name: "state", value: "x.json" },
        { name: "tls" },
        { name: "pin", value: "sha256:ab" },
        { name: "token-file", value: "/etc/moat/token" },
      ],
    });
    assert.deepEqual(execStartOf(unit), [
      "/usr/local/bin/moat",
      "ship",
      "/var/log/auth.log",
      "/var/log/nginx/access.log=nginx $x 100%",
      "--config",
      "/srv/moat/ship.conf",
      "--spool-size",
      "2097152",
      "--tls",
      "--pin",
      "sha256:ab",
      "--token-file",
      "/etc/moat/token",
      "--server",
      "10.0.0.1:4320",
      "--state-dir",
      "/var/lib/moat-ship",
    ]);
    assert.deepEqual(settings(unit, "ReadOnlyPaths"), [
      "-/var/log -/var/log/nginx -/etc/moat/more /srv/moat/ship.conf /etc/moat/token",
    ]);
    assert.match(unit, /read from --config as it is now/);
  });

  test("renderShipUnit runs as a dedicated user with least privilege", () => {
    const unit = shipUnit();
    for (
      const line of [
        "User=moat-ship",
        "Group=moat-ship",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictAddressFamilies=AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "Restart=always",
        "RestartPreventExitStatus=2",
        "UMask=0077",
        "StateDirectory=moat-ship",
      ]
    ) assert.ok(unit.split("\n").includes(line), line);
    assert.doesNotMatch(unit, /^(DynamicUser|MemoryDenyWriteExecute)=/m);
    assert.deepEqual(settings(unit, "ReadOnlyPaths"), ["-/var/log"]);
    assert.deepEqual(settings(unit, "ReadWritePaths"), []);
    assert.deepEqual(settings(unit, "IPAddressDeny"), ["any"]);
    assert.deepEqual(settings(unit, "IPAddressAllow"), ["10.0.0.1"]);
    assert.deepEqual(settings(unit, "SupplementaryGroups"), []);
  });

  test("renderShipUnit lets through only the server's addresses, and its name servers for a name", () => {
    const v6 = shipUnit({
      server: { hostname: "2001:db8::1", port: 4320 },
      serverAddresses: ["2001:db8::1"],
      nameServers: ["10.255.255.53"],
    });
    assert.deepEqual(settings(v6, "IPAddressAllow"), ["2001:db8::1"]);
    assert.ok(execStartOf(v6).includes("[2001:db8::1]:4320"));
    const named = shipUnit({
      server: { hostname: "loghost", port: 4320 },
      serverAddresses: ["10.0.0.1", "2001:db8::1", "10.0.0.1"],
      nameServers: ["127.0.0.53"],
    });
    assert.deepEqual(settings(named, "IPAddressAllow"), [
      "10.0.0.1",
      "2001:db8::1",
      "127.0.0.53",
    ]);
    assert.ok(execStartOf(named).includes("loghost:4320"));
    assert.deepEqual(settings(named, "RestrictAddressFamilies"), [
      "AF_INET AF_INET6 AF_UNIX",
    ]);
    assert.match(named, /loghost resolved to the addresses above/);
  });

  test("renderShipUnit with several front doors: every door in --server, in order, and only their addresses", () => {
    const unit = shipUnit({
      server: [
        { hostname: "10.0.0.1", port: 4320 },
        { hostname: "2001:db8::2", port: 4321 },
        { hostname: "door3", port: 4320 },
      ],
      serverAddresses: ["10.0.0.1", "2001:db8::2", "10.0.0.3"],
      nameServers: ["127.0.0.53"],
    });
    const words = execStartOf(unit);
    assert.equal(
      words[words.indexOf("--server") + 1],
      "10.0.0.1:4320,[2001:db8::2]:4321,door3:4320",
    );
    assert.equal(words.filter((w) => w === "--server").length, 1);
    assert.deepEqual(settings(unit, "IPAddressAllow"), [
      "10.0.0.1",
      "2001:db8::2",
      "10.0.0.3",
      "127.0.0.53",
    ]);
    assert.match(unit, /^# door3 resolved to the addresses above/m);
    assert.match(
      unit,
      /^Description=moat log shipper to 10\.0\.0\.1:4320, \[2001:db8::2\]:4321, door3:4320$/m,
    );
  });

  test("renderShipUnit makes the state writable: StateDirectory under /var/lib, else ReadWritePaths", () => {
    const file = shipUnit({ state: { file: "/var/lib/ship/s.json" } });
    assert.deepEqual(execStartOf(file).slice(-2), [
      "--state",
      "/var/lib/ship/s.json",
    ]);
    assert.deepEqual(settings(file, "StateDirectory"), ["ship"]);
    const dir = shipUnit({ state: { dir: "/srv/state" } });
    assert.deepEqual(execStartOf(dir).slice(-2), ["--state-dir", "/srv/state"]);
    assert.deepEqual(settings(dir, "StateDirectory"), []);
    assert.deepEqual(settings(dir, "ReadWritePaths"), ["/srv/state"]);
  });

  test("renderShipUnit binds home folders in and keeps the host's /tmp when a path is there", () => {
    const unit = shipUnit({
      inputs: [{ path: "/home/ann/app.log" }, { path: "/tmp/x/t.log" }],
      state: { dir: "/root/ship-state" },
    });
    assert.deepEqual(settings(unit, "ProtectHome"), ["tmpfs"]);
    assert.deepEqual(settings(unit, "BindReadOnlyPaths"), ["-/home/ann"]);
    assert.deepEqual(settings(unit, "BindPaths"), ["/root/ship-state"]);
    assert.deepEqual(settings(unit, "PrivateTmp"), ["no"]);
  });

  test("renderShipUnit adds the groups that can read the files, and warns about files only their owner reads", () => {
    const unit = shipUnit({
      readGroups: ["adm", "1234"],
      unreadable: ["/var/log/messages"],
    });
    assert.deepEqual(settings(unit, "SupplementaryGroups"), ["adm 1234"]);
    assert.match(
      unit,
      /WARNING: only their owner can read "\/var\/log\/messages"/,
    );
  });

  test("renderShipUnit narrows Deno's permissions to the server, the folders and the state", () => {
    const unit = shipUnit({
      launcher: {
        executable: "/usr/bin/deno",
        script: "/opt/moat/main.ts",
        runtime: "deno",
      },
    });
    assert.deepEqual(execStartOf(unit).slice(0, 8), [
      "/usr/bin/deno",
      "run",
      "--no-prompt",
      "--allow-net=10.0.0.1:4320",
      "--allow-read=/var/log,/var/lib/moat-ship",
      "--allow-write=/var/lib/moat-ship",
      "--allow-env=MOAT_TOKEN",
      "/opt/moat/main.ts",
    ]);
    assert.deepEqual(settings(unit, "RestrictAddressFamilies"), [
      "AF_INET AF_INET6 AF_UNIX",
    ]);
  });

  const bad: [string, Partial<ShipUnitOptions>, RegExp][] = [
    ["standard input", {
      inputs: [{ path: "-" }],
      followed: [],
    }, /standard input/],
    ["trust on first use", { flags: [{ name: "tls" }] }, /--pin FP or --ca/],
    ["a server without an address", { serverAddresses: [] }, /has no address/],
    ["an address that is not one", {
      serverAddresses: ["10.0.0.1; rm"],
    }, /not an IP address/],
    ["/var/lib itself as the state folder", {
      state: { dir: "/var/lib" },
    }, /folder of its own/],
    ["a control character in a path", {
      inputs: [{ path: "/var/log/a\nb" }],
    }, /control character/],
    ["a group systemd cannot name", {
      readGroups: ["adm wheel"],
    }, /group name/],
    ["a relative program", {
      launcher: { executable: "moat" },
    }, /not absolute/],
  ];
  for (const [what, extra, message] of bad) {
    test(`renderShipUnit refuses ${what}`, () => {
      assert.throws(
        () => shipUnit(extra),
        (err: unknown) =>
          err instanceof UsageError && message.test(err.message),
      );
    });
  }
});

test(
  "renderShipUnit output passes systemd-analyze verify",
  { skip: noAnalyze ?? false },
  () => {
    using dir = tempDir();
    const cases: Partial<ShipUnitOptions>[] = [
      {},
      {
        inputs: [
          { path: "/home/ann/my logs/app.log", name: 'a "quoted" $HOME; 100%' },
          { path: "/tmp/x.log" },
        ],
        flags: [{ name: "tls" }, { name: "pin", value: "sha256:00" }],
        server: { hostname: "loghost", port: 4320 },
        serverAddresses: ["10.0.0.1", "2001:db8::1"],
        nameServers: ["127.0.0.53"],
        state: { dir: "/srv/ship %n" },
        readGroups: ["adm", "4"],
        unreadable: ["/var/log/messages"],
      },
      { state: { file: "/var/lib/moat-ship/one.json" } },
    ];
    for (const [i, extra] of cases.entries()) {
      for (
        const launcher of [
          { executable: process.execPath },
          {
            executable: process.execPath,
            script: "/opt/moat/main.ts",
            runtime: "deno" as const,
          },
        ]
      ) {
        const unit = shipUnit({ ...extra, launcher });
        const file = path.join(dir.dir, `moat-ship${i}.service`);
        fs.writeFileSync(file, unit);
        const r = spawnSync("systemd-analyze", ["verify", "--man=no", file], {
          encoding: "utf8",
          timeout: 30_000,
        });
        assert.equal(r.status, 0, `${unit}\n${r.stderr}`);
        assert.equal(r.stderr, "", `${unit}\n${r.stderr}`);
      }
    }
  },
);

/** Runs main.ts on the runtime running the tests. */
function runMain(args: string[], cwd: string) {
  const runtime = navigator.userAgent.startsWith("Deno")
    ? ["run", "-A", MAIN]
    : [MAIN];
  return spawnSync(process.execPath, [...runtime, ...args], {
    cwd,
    timeout: 60_000,
    encoding: "utf8",
  });
}

test("moat ship --print-systemd-unit prints the unit for its inputs and does not connect", () => {
  using dir = tempDir();
  const real = fs.realpathSync(dir.dir);
  fs.mkdirSync(path.join(dir.dir, "logs"));
  fs.writeFileSync(path.join(dir.dir, "logs", "app.log"), "a\n");
  fs.writeFileSync(path.join(dir.dir, "logs", "private.log"), "p\n");
  fs.chmodSync(path.join(dir.dir, "logs", "private.log"), 0o600);
  fs.writeFileSync(
    path.join(dir.dir, "ship.conf"),
    "# more\nother/web.log=web\n",
  );
  const root = process.getuid?.() === 0;
  const adm = root ? spawnSync("getent", ["group", "adm"]).status === 0 : false;
  if (adm) {
    fs.writeFileSync(path.join(dir.dir, "logs", "auth.log"), "s\n");
    fs.chownSync(path.join(dir.dir, "logs", "auth.log"), 0, 4);
    fs.chmodSync(path.join(dir.dir, "logs", "auth.log"), 0o640);
  }
  const r = runMain([
    "ship",
    "logs/app.log",
    "logs/private.log=priv",
    ...(adm ? ["logs/auth.log"] : []),
    "--config",
    "ship.conf",
    "--server",
    "127.0.0.1:1",
    "--state-dir",
    "state",
    "--print-systemd-unit",
  ], dir.dir);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, "", "no connection, so no retry line");
  const words = execStartOf(r.stdout);
  assert.deepEqual(words.slice(words.indexOf("ship")), [
    "ship",
    path.join(real, "logs", "app.log"),
    `${path.join(real, "logs", "private.log")}=priv`,
    ...(adm ? [path.join(real, "logs", "auth.log")] : []),
    "--config",
    path.join(real, "ship.conf"),
    "--server",
    "127.0.0.1:1",
    "--state-dir",
    path.join(real, "state"),
  ]);
  assert.deepEqual(settings(r.stdout, "IPAddressAllow"), ["127.0.0.1"]);
  assert.deepEqual(settings(r.stdout, "ReadOnlyPaths"), [
    `-${path.join(real, "logs")} -${path.join(real, "other")} ${
      path.join(real, "ship.conf")
    }`,
  ]);
  assert.deepEqual(settings(r.stdout, "ReadWritePaths"), [
    path.join(real, "state"),
  ]);
  if (root) {
    // Owned by root and 0600: only root reads it, so the unit cannot.
    assert.match(r.stdout, /WARNING: only their owner can read .*private\.log/);
  }
  if (adm) assert.deepEqual(settings(r.stdout, "SupplementaryGroups"), ["adm"]);

  const stdin = runMain(["ship", "-", "--print-systemd-unit"], dir.dir);
  assert.equal(stdin.status, 2);
  assert.equal(
    stdin.stderr,
    'moat: Cannot write a systemd unit that reads standard input ("-"): a service has none\n',
  );
});

test("the ExecStart of moat ship --print-systemd-unit ships to a server", async () => {
  using dir = tempDir();
  const { startServer, runMoat } = await import("./_e2e.ts");
  const vault = path.join(dir.dir, "vault");
  await using server = await startServer(["--vault", vault]);
  fs.mkdirSync(path.join(dir.dir, "logs"));
  fs.mkdirSync(path.join(dir.dir, "state"));
  const lines = Array.from({ length: 100 }, (_, i) => `unit ${i}\n`).join("");
  fs.writeFileSync(path.join(dir.dir, "logs", "app.log"), lines);
  const printed = runMain([
    "ship",
    "logs/app.log",
    "--server",
    `127.0.0.1:${server.port}`,
    "--state-dir",
    "state",
    "--print-systemd-unit",
  ], dir.dir);
  assert.equal(printed.status, 0, printed.stderr);
  // Under Deno this is `deno run --no-prompt --allow-net=127.0.0.1:PORT …`:
  // the narrowed permissions must be enough to ship.
  const [cmd, ...args] = execStartOf(printed.stdout);
  const shipper = spawn(cmd!, args, {
    cwd: "/",
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  shipper.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const exited = new Promise<number | null>((r) =>
    shipper.on("close", (c) => r(c))
  );
  try {
    let stored = "";
    for (let i = 0; i < 300 && stored !== lines; i++) {
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(shipper.exitCode, null, `shipper exited: ${stderr}`);
      stored = (await runMoat(["vault", "cat", vault, "--source", "app"]))
        .stdout;
    }
    assert.equal(stored, lines, stderr);
  } finally {
    process.kill(shipper.pid!, "SIGTERM");
  }
  assert.equal(await exited, 0, stderr);
});
