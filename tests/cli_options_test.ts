import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import {
  type CommandSpec,
  describeFsError,
  editDistance,
  formatHelp,
  parseArgsConfig,
  parseCommand,
  suggest,
  unknownWord,
  wrap,
} from "../cli/options.ts";
import { formatMainHelp } from "../cli/help.ts";
import { DEFAULT_SERVER, serverAddr } from "../cli/_client.ts";
import { SERVE } from "../cli/serve.ts";
import { GET } from "../cli/get.ts";
import { CHAT } from "../cli/chat.ts";
import { SHIP } from "../cli/ship.ts";
import { CERT } from "../cli/cert.ts";
import { parseSince, VAULT, vaultCommand } from "../cli/vault.ts";
import { VERIFY_PROOF } from "../cli/verify_proof.ts";
import { UsageError } from "../lib/errors.ts";
import {
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_MAX_CONNS,
  DEFAULT_MAX_LINE,
  DEFAULT_PORT,
} from "../lib/limits.ts";
import { DEFAULT_MAX_FRAME_SIZE } from "../lib/framer.ts";
import { MIN_MAX_FRAME_SIZE } from "../lib/protocol.ts";
import { DEFAULT_CLIENT_TIMEOUT_MS } from "../lib/client.ts";
import { DEFAULT_SYSLOG_MAX } from "../lib/syslog.ts";
import { DEFAULT_SEAL_INTERVAL_MS } from "../lib/vault/store.ts";
import { DEFAULT_SPOOL_BYTES } from "../lib/ship/spool.ts";
import { DEFAULT_CERT_DAYS } from "../lib/cert.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");

/** A small command with one option of each kind. */
const DEMO = {
  name: "demo",
  summary: "A demonstration",
  usage: ["demo [options] ARG..."],
  description: "Does nothing.",
  positionals: true,
  options: {
    port: {
      type: "integer",
      placeholder: "N",
      min: 0,
      max: 65535,
      default: 4320,
      description: "Port",
    },
    count: { type: "integer", placeholder: "N", min: 1, description: "Count" },
    server: {
      type: "string",
      placeholder: "HOST",
      env: "DEMO_SERVER",
      default: "localhost",
      description: "Server",
    },
    out: {
      type: "string",
      short: "o",
      placeholder: "FILE",
      description: "Output",
    },
    digest: {
      type: "string",
      placeholder: "NAME",
      choices: ["crc32", "sha256"],
      default: "crc32",
      description: "Digest",
    },
    force: { type: "boolean", description: "Force" },
    allow: {
      type: "string",
      placeholder: "RULE",
      multiple: true,
      description: "Allow",
    },
    ca: { type: "file", placeholder: "F", description: "CA file" },
  },
  env: [{ name: "DEMO_TOKEN", description: "A token" }],
  exits: [{ code: 0, description: "success" }, {
    code: 2,
    description: "bad usage",
  }],
} as const satisfies CommandSpec;

const NO_POSITIONALS: CommandSpec = { ...DEMO, positionals: false };

function values(args: string[], env: Record<string, string> = {}) {
  const parsed = parseCommand(DEMO, args, { env });
  assert.equal(parsed.help, false);
  if (parsed.help) throw new Error("unreachable");
  return parsed;
}

/** The message of the UsageError that parsing `args` throws. */
function usageError(
  args: string[],
  spec: CommandSpec = DEMO,
  env: Record<string, string> = {},
): string {
  try {
    parseCommand(spec, args, { env });
  } catch (err) {
    assert.ok(err instanceof UsageError, String(err));
    assert.equal(err.exitCode, 2);
    assert.ok(!err.message.includes("\n"), `one line: ${err.message}`);
    return err.message;
  }
  assert.fail(`${JSON.stringify(args)} was accepted`);
}

test("parseArgsConfig gives parseArgs strings for integers and files, and adds -h", () => {
  assert.deepEqual(parseArgsConfig(DEMO.options), {
    port: { type: "string" },
    count: { type: "string" },
    server: { type: "string" },
    out: { type: "string", short: "o" },
    digest: { type: "string" },
    force: { type: "boolean" },
    allow: { type: "string", multiple: true },
    ca: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
});

test("parseCommand applies defaults: integers as numbers, booleans false, repeatables empty", () => {
  const { values: v, positionals, given } = values([]);
  assert.deepEqual(v, {
    port: 4320,
    count: undefined,
    server: "localhost",
    out: undefined,
    digest: "crc32",
    force: false,
    allow: [],
    ca: undefined,
  });
  assert.deepEqual(positionals, []);
  assert.deepEqual(given, []);
});

test("parseCommand reads values in every spelling and keeps them in order", () => {
  const parsed = values([
    "a",
    "--port=0",
    "-o",
    "x.bin",
    "--allow",
    "10.0.0.0/8",
    "--force",
    "--allow=::1",
    "b",
    "--count",
    "3",
    "--",
    "--port",
  ]);
  assert.equal(parsed.values.port, 0);
  assert.equal(parsed.values.count, 3);
  assert.equal(parsed.values.out, "x.bin");
  assert.equal(parsed.values.force, true);
  assert.deepEqual(parsed.values.allow, ["10.0.0.0/8", "::1"]);
  assert.deepEqual(parsed.positionals, ["a", "b", "--port"]);
  assert.deepEqual(parsed.given, [
    { name: "port", value: "0" },
    { name: "out", value: "x.bin" },
    { name: "allow", value: "10.0.0.0/8" },
    { name: "force" },
    { name: "allow", value: "::1" },
    { name: "count", value: "3" },
  ]);
});

test("parseCommand takes an option's default from its environment variable, below the command line", () => {
  assert.equal(
    values([], { DEMO_SERVER: "env.host" }).values.server,
    "env.host",
  );
  assert.equal(
    values(["--server", "cli.host"], { DEMO_SERVER: "env.host" }).values.server,
    "cli.host",
  );
  assert.equal(values([], { DEMO_SERVER: "" }).values.server, "localhost");
});

test("parseCommand returns help for -h and --help", () => {
  assert.deepEqual(parseCommand(DEMO, ["-h"]), { help: true });
  assert.deepEqual(parseCommand(DEMO, ["--port", "1", "--help"]), {
    help: true,
  });
});

test("parseCommand says which integer it expected, negative numbers included", () => {
  const cases: [string[], string][] = [
    [
      ["--port", "-1"],
      'Invalid --port "-1": expected an integer ≥ 0 and ≤ 65535',
    ],
    [["--port=-1"], 'Invalid --port "-1": expected an integer ≥ 0 and ≤ 65535'],
    [
      ["--port", "65536"],
      'Invalid --port "65536": expected an integer ≥ 0 and ≤ 65535',
    ],
    [["--count", "0"], 'Invalid --count "0": expected an integer ≥ 1'],
    [["--count", "-5"], 'Invalid --count "-5": expected an integer ≥ 1'],
    [["--count", "1.5"], 'Invalid --count "1.5": expected an integer ≥ 1'],
    [["--count", "0x10"], 'Invalid --count "0x10": expected an integer ≥ 1'],
    [["--count", "1e3"], 'Invalid --count "1e3": expected an integer ≥ 1'],
    [["--count", ""], 'Invalid --count "": expected an integer ≥ 1'],
    [["--count", "soon"], 'Invalid --count "soon": expected an integer ≥ 1'],
    [
      ["--count", "99999999999999999999"],
      'Invalid --count "99999999999999999999": expected an integer ≥ 1',
    ],
  ];
  for (const [args, message] of cases) {
    assert.equal(usageError(args), message, JSON.stringify(args));
  }
});

test("parseCommand suggests the closest option for a mistyped one", () => {
  assert.equal(
    usageError(["--prot", "1"]),
    'Unknown option "--prot" (did you mean --port?)',
  );
  assert.equal(
    usageError(["--forse"]),
    'Unknown option "--forse" (did you mean --force?)',
  );
  assert.equal(
    usageError(["--bogus"]),
    'Unknown option "--bogus" (see moat demo --help)',
  );
  assert.equal(
    usageError(["-x"]),
    'Unknown option "-x" (see moat demo --help)',
  );
  for (const name of ["constructor", "__proto__", "toString"]) {
    assert.match(usageError([`--${name}`, "x"]), /^Unknown option "--/, name);
  }
  assert.equal(
    usageError(["--\x1b[2J"]),
    'Unknown option "--\\e[2J" (see moat demo --help)',
  );
});

test("parseCommand reports a missing value, also when the next argument is an option", () => {
  assert.equal(
    usageError(["--out"]),
    "Missing value for --out: expected FILE",
  );
  assert.equal(
    usageError(["-o", "--force"]),
    'Missing value for -o: expected FILE before "--force" (write --out=--force if "--force" is the value)',
  );
  assert.equal(
    usageError(["--port", "--force"]),
    'Missing value for --port: expected N before "--force" (write --port=--force if "--force" is the value)',
  );
  assert.equal(values(["--out=--force"]).values.out, "--force");
  assert.equal(values(["--out", "-"]).values.out, "-");
});

test("parseCommand refuses a value for a boolean and arguments a command does not take", () => {
  assert.equal(usageError(["--force=yes"]), "Option --force takes no value");
  assert.equal(
    usageError(["stray"], NO_POSITIONALS),
    'Unexpected argument "stray" (see moat demo --help)',
  );
});

test("parseCommand accepts only the listed choices", () => {
  assert.equal(
    usageError(["--digest", "md5"]),
    'Unknown --digest "md5": use crc32 or sha256',
  );
  assert.equal(values(["--digest", "sha256"]).values.digest, "sha256");
});

test("parseCommand checks an environment variable's value as it would the option's", () => {
  const spec: CommandSpec = {
    ...DEMO,
    options: {
      count: { ...DEMO.options.count, env: "DEMO_COUNT" },
    },
  };
  assert.equal(
    usageError([], spec, { DEMO_COUNT: "-3" }),
    'Invalid $DEMO_COUNT "-3": expected an integer ≥ 1',
  );
});

test("parseCommand names a missing or unreadable file with its path, not an errno code", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-cli-"));
  try {
    const file = path.join(dir, "ca.pem");
    fs.writeFileSync(file, "x");
    assert.equal(values(["--ca", file]).values.ca, file);
    const missing = path.join(dir, "nope.pem");
    assert.equal(
      usageError(["--ca", missing]),
      `Cannot read --ca "${missing}": no such file or directory`,
    );
    assert.equal(
      usageError(["--ca", dir]),
      `Cannot read --ca "${dir}": is a directory`,
    );
    assert.equal(
      usageError(["--ca", path.join(file, "x")]),
      `Cannot read --ca "${
        path.join(file, "x")
      }": a part of the path is not a directory`,
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("parseCommand never lets a parseArgs sentence through", () => {
  const bad = [
    ["--port", "-1"],
    ["--count", "-1"],
    ["-o", "-x"],
    ["--out"],
    ["--force=1"],
    ["--nope=3"],
    ["-xyz"],
    ["-o"],
    ["--server", "--port"],
  ];
  for (const args of bad) {
    const message = usageError(args);
    assert.doesNotMatch(
      message,
      /ambiguous|ERR_(?:PARSE_ARGS)|To specify|positional argument|'/,
      message,
    );
    assert.match(message, /^(Invalid|Unknown|Missing|Option|Unexpected)/);
  }
});

test("editDistance counts insertions, deletions, substitutions and transpositions", () => {
  const rows: [string, string, number][] = [
    ["", "", 0],
    ["", "abc", 3],
    ["serve", "serve", 0],
    ["serv", "serve", 1],
    ["prot", "port", 1],
    ["chta", "chat", 1],
    ["kitten", "sitting", 3],
    ["ca", "abc", 3],
  ];
  for (const [a, b, d] of rows) {
    assert.equal(editDistance(a, b), d, `${a} → ${b}`);
    assert.equal(editDistance(b, a), d, `${b} → ${a}`);
  }
});

test("suggest offers close words only, ties in order", () => {
  const commands = ["serve", "get", "cert", "chat", "ship", "vault", "help"];
  assert.deepEqual(suggest("serv", commands), ["serve"]);
  assert.deepEqual(suggest("SERVE", commands), ["serve"]);
  assert.deepEqual(suggest("chta", commands), ["chat"]);
  assert.deepEqual(suggest("vaul", commands), ["vault"]);
  assert.deepEqual(suggest("frobnicate", commands), []);
  assert.deepEqual(suggest("x", commands), []);
  assert.deepEqual(suggest("lss", ["init", "verify", "ls", "cat"]), ["ls"]);
  assert.deepEqual(suggest("max-lin", ["max-line", "max-frame"]), [
    "max-line",
  ]);
  assert.deepEqual(suggest("bat", ["cat", "hat"]), ["cat", "hat"]);
});

test("unknownWord names the word, and suggests or points to the help", () => {
  assert.equal(
    unknownWord("command", "serv", {
      candidates: ["serve", "get"],
      see: "see moat help",
    }).message,
    'Unknown command "serv" (did you mean serve?)',
  );
  assert.equal(
    unknownWord("command", "frobnicate", {
      candidates: ["serve", "get"],
      see: "see moat help",
    }).message,
    'Unknown command "frobnicate" (see moat help)',
  );
});

test("vaultCommand names a mistyped subcommand before anything else", async () => {
  const context = { env: {}, target: "script", script: "main.ts" };
  await assert.rejects(
    vaultCommand(["lss"], context),
    { message: 'Unknown vault command "lss" (did you mean ls?)' },
  );
  await assert.rejects(
    vaultCommand(["frob", "DIR"], context),
    {
      message:
        'Unknown vault command "frob" (init, verify, ls, cat, prune, checkpoint, proof, export or import)',
    },
  );
  await assert.rejects(
    vaultCommand(["ls", "--sorce", "x", "DIR"], context),
    { message: 'Unknown option "--sorce" (see moat vault ls --help)' },
  );
  await assert.rejects(
    vaultCommand(["cat", "--sorce", "x", "DIR"], context),
    { message: 'Unknown option "--sorce" (did you mean --source?)' },
  );
  const missing = path.join(os.tmpdir(), `moat-no-vault-${process.pid}`);
  await assert.rejects(
    vaultCommand(["ls", missing], context),
    { message: `Cannot read vault "${missing}": no such file or directory` },
  );
});

test("parseSince takes ISO 8601 times and durations ago", () => {
  assert.equal(parseSince("2024-05-01T00:00:00Z"), Date.UTC(2024, 4, 1));
  const before = Date.now();
  const t = parseSince("15m");
  const after = Date.now();
  assert.ok(before - 15 * 60e3 <= t && t <= after - 15 * 60e3, String(t));
  assert.throws(() => parseSince("yesterday"), /Invalid --since "yesterday"/);
});

test("serverAddr accepts HOST without a port and gives it the default port", () => {
  assert.deepEqual(serverAddr("example.org"), {
    hostname: "example.org",
    port: DEFAULT_PORT,
  });
  assert.deepEqual(serverAddr("::1"), { hostname: "::1", port: DEFAULT_PORT });
  assert.deepEqual(serverAddr("[::1]:9"), { hostname: "::1", port: 9 });
  assert.deepEqual(serverAddr(DEFAULT_SERVER), {
    hostname: "127.0.0.1",
    port: DEFAULT_PORT,
  });
});

test("the command tables take their defaults from lib/ constants", () => {
  const serve = parseCommand(SERVE, []);
  assert.ok(!serve.help);
  assert.equal(serve.values.port, DEFAULT_PORT);
  assert.equal(serve.values["max-conns"], DEFAULT_MAX_CONNS);
  assert.equal(serve.values["max-line"], DEFAULT_MAX_LINE);
  assert.equal(serve.values["max-frame"], DEFAULT_MAX_FRAME_SIZE);
  assert.equal(serve.values["idle-timeout"] * 1000, DEFAULT_IDLE_TIMEOUT_MS);
  assert.equal(
    serve.values["handshake-timeout"] * 1000,
    DEFAULT_HANDSHAKE_TIMEOUT_MS,
  );
  assert.equal(serve.values["seal-interval"] * 1000, DEFAULT_SEAL_INTERVAL_MS);
  assert.equal(serve.values["syslog-max"], DEFAULT_SYSLOG_MAX);
  const get = parseCommand(GET, []);
  assert.ok(!get.help);
  assert.equal(get.values.timeout * 1000, DEFAULT_CLIENT_TIMEOUT_MS);
  assert.equal(get.values["max-frame"], DEFAULT_MAX_FRAME_SIZE);
  assert.equal(get.values.server, `127.0.0.1:${DEFAULT_PORT}`);
  const ship = parseCommand(SHIP, []);
  assert.ok(!ship.help);
  assert.equal(ship.values["spool-size"], DEFAULT_SPOOL_BYTES);
  const cert = parseCommand(CERT, []);
  assert.ok(!cert.help);
  assert.equal(cert.values.days, DEFAULT_CERT_DAYS);
  assert.equal(
    usageError(["--max-frame", String(MIN_MAX_FRAME_SIZE - 1)], GET),
    `Invalid --max-frame "${
      MIN_MAX_FRAME_SIZE - 1
    }": expected an integer ≥ ${MIN_MAX_FRAME_SIZE}`,
  );
  const fromEnv = parseCommand(GET, [], { env: { MOAT_SERVER: "10.0.0.1" } });
  assert.ok(!fromEnv.help);
  assert.equal(fromEnv.values.server, "10.0.0.1");
});

test("formatHelp shows each option with its placeholder and default, the environment and the exit codes", () => {
  const text = formatHelp(DEMO);
  assert.match(
    text,
    /^Usage: moat demo \[options\] ARG\.\.\.\n\nDoes nothing\.\n/,
  );
  assert.match(text, /\n {2}--port N +Port \(default 4320\)\n/);
  assert.match(text, /\n {2}-o, --out FILE +Output\n/);
  assert.match(text, /\n {2}--allow RULE +Allow \(repeatable\)\n/);
  assert.match(
    text,
    /\n {2}--server HOST +Server \(default \$DEMO_SERVER, else localhost\)\n/,
  );
  assert.match(text, /\n {2}-h, --help +Show this help\n/);
  assert.match(
    text,
    /\nEnvironment:\n {2}DEMO_SERVER +Default for --server HOST\n {2}DEMO_TOKEN +A token\n/,
  );
  assert.match(text, /\nExit codes:\n {2}0 +success\n {2}2 +bad usage\n$/);
});

test("every command's --help fits 80 columns and lists its defaults, environment and exit codes", () => {
  const specs = [
    SERVE,
    GET,
    CHAT,
    SHIP,
    VAULT,
    CERT,
    VERIFY_PROOF,
  ] as CommandSpec[];
  for (const spec of specs) {
    const text = formatHelp(spec);
    for (const line of text.split("\n")) {
      assert.ok(line.length <= 80, `${spec.name}: ${line}`);
    }
    assert.match(text, new RegExp(`^Usage: moat ${spec.name}`));
    assert.match(text, /\nExit codes:\n {2}0 /);
    assert.match(text, /\n {2}2 +bad usage/);
  }
  const serve = formatHelp(SERVE);
  assert.match(serve, new RegExp(`--port N .*\\(default ${DEFAULT_PORT}\\)`));
  assert.match(serve, new RegExp(`\\(default ${DEFAULT_MAX_CONNS}\\)`));
  assert.match(serve, new RegExp(`\\(default ${DEFAULT_MAX_LINE}\\)`));
  assert.match(serve, /\n {2}MOAT_TOKEN /);
  for (const spec of [GET, CHAT, SHIP] as CommandSpec[]) {
    const text = formatHelp(spec);
    for (const name of ["MOAT_SERVER", "MOAT_TOKEN", "MOAT_CONFIG_DIR"]) {
      assert.match(text, new RegExp(`\\n {2}${name} `), `${spec.name}`);
    }
    assert.match(text, /\n {2}3 +the server refused/);
    // --server HOST is fine; the help says which port it gets.
    assert.match(text, new RegExp(`the port defaults to\\s+${DEFAULT_PORT}`));
  }
  assert.match(formatHelp(GET), /\n {2}4 +the server refused the path/);
  assert.match(formatHelp(SHIP), /\n {2}XDG_STATE_HOME /);
  assert.match(formatHelp(VAULT), /\n {2}5 +verify found damage/);
});

/** Environment variables read anywhere in lib/, cli/ or main.ts. */
function variablesRead(): Set<string> {
  const names = new Set<string>();
  const files = ["main.ts"];
  for (const dir of ["lib", "cli"]) {
    for (const f of fs.readdirSync(path.join(ROOT, dir), { recursive: true })) {
      if (String(f).endsWith(".ts")) files.push(path.join(dir, String(f)));
    }
  }
  for (const file of files) {
    const text = fs.readFileSync(path.join(ROOT, file), "utf8");
    for (const m of text.matchAll(/\benv\??\.([A-Z][A-Z0-9_]+)\b/g)) {
      names.add(m[1]!);
    }
    for (const m of text.matchAll(/\benv: "([A-Z][A-Z0-9_]+)"/g)) {
      names.add(m[1]!);
    }
  }
  return names;
}

test("moat --help lists every command and every environment variable moat reads", () => {
  const text = formatMainHelp([SERVE, GET, CERT, CHAT, SHIP, VAULT]);
  for (
    const name of ["serve", "get", "cert", "chat", "ship", "vault", "help"]
  ) {
    assert.match(text, new RegExp(`\\n {2}${name} +\\S`), name);
  }
  const read = variablesRead();
  for (const name of ["MOAT_SERVER", "MOAT_TOKEN", "MOAT_CONFIG_DIR"]) {
    assert.ok(read.has(name), `the scan finds ${name}`);
  }
  for (const name of read) {
    assert.match(text, new RegExp(`\\n {2}${name} +read by `), name);
  }
  assert.match(text, /\n {2}MOAT_SERVER +read by get, chat and ship\n/);
});

test("wrap fills lines up to the width and gives a long word its own line", () => {
  assert.deepEqual(wrap("aa bb cc dd", 5), ["aa bb", "cc dd"]);
  assert.deepEqual(wrap("a verylongword b", 4), ["a", "verylongword", "b"]);
  assert.deepEqual(wrap("  ", 10), []);
});

test("describeFsError turns errno codes into words", () => {
  assert.equal(
    describeFsError({ code: "ENOENT" }),
    "no such file or directory",
  );
  assert.equal(describeFsError({ code: "EACCES" }), "permission denied");
  assert.equal(describeFsError({ code: "EWEIRD" }), "EWEIRD");
  assert.equal(describeFsError(new Error("boom")), "boom");
});
