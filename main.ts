// deno-lint-ignore-file no-console
/**
 * moat's one entrypoint: parses arguments, picks the mode, prints, and sets
 * the exit status. Nothing in lib/ prints or exits.
 *
 * @module
 */

import { parseArgs } from "node:util";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { getNet, runtimeInfo } from "./lib/net/mod.ts";
import { compileAllowlist, splitRules } from "./lib/allowlist.ts";
import { createJail } from "./lib/jail.ts";
import { AuditLog } from "./lib/audit.ts";
import { Server } from "./lib/server/mod.ts";
import {
  chat,
  type ClientOptions,
  DEFAULT_CLIENT_TIMEOUT_MS,
  get,
  parseServerAddr,
} from "./lib/client.ts";
import { formatChatLine } from "./lib/chat.ts";
import {
  AddressInUseError,
  ExitCode,
  MoatError,
  UsageError,
} from "./lib/errors.ts";
import { escapeText } from "./lib/text.ts";
import { VERSION } from "./lib/version.ts";
import { renderSystemdUnit } from "./lib/systemd.ts";
import { DEFAULT_MAX_FRAME_SIZE } from "./lib/framer.ts";
import { DEFAULT_DIGEST, DIGESTS, isDigestName } from "./lib/digest.ts";
import {
  CLIENT_SECURITY_HELP,
  CLIENT_SECURITY_OPTIONS,
  clientSecurity,
  SERVE_SECURITY_HELP,
  SERVE_SECURITY_OPTIONS,
  serverSecurity,
} from "./lib/secure_cli.ts";
import { colonFingerprint, createSelfSignedCert } from "./lib/cert.ts";
import {
  DEFAULT_MAX_LINE_BYTES,
  openVault,
  type Vault,
} from "./lib/vault/store.ts";
import { DEFAULT_SYSLOG_MAX } from "./lib/syslog.ts";
import { listSources, readRecords } from "./lib/vault/read.ts";
import { initVault } from "./lib/vault/init.ts";
import { verifyVault } from "./lib/vault/verify.ts";
import { ship } from "./lib/ship/shipper.ts";
import { defaultStatePath } from "./lib/ship/state.ts";

// Set by `bun build --define` for release binaries.
declare const MOAT_TARGET: string | undefined;
const TARGET = typeof MOAT_TARGET === "string" ? MOAT_TARGET : "script";

const HELP: Record<string, string> = {
  main: `moat ${VERSION} — a guarded socket tool

Usage: moat <command> [options]

Commands:
  serve   Listen, refuse every peer not allowed, serve files and chat, log everything
  get     Fetch a file from a server: verified, saved atomically
  cert    Make a key and a self-signed certificate for TLS
  chat    Talk with the server's operator and other clients, line by line
  ship    Stream log files (or stdin) to a server's vault; lose nothing
  vault   Keep a vault: moat vault init|verify|ls|cat DIR
  help    Show help for a command: moat help <command>

Options:
  -h, --help     Show help
  -V, --version  Show the version, runtime and target

Environment:
  MOAT_SERVER    Default server for get and chat (default 127.0.0.1:4320)
`,
  serve: `Usage: moat serve [options]

Listen (default port 4320) and serve the files under --root and a chat room to
allowed peers only. Everyone else is refused before a byte is read, and logged.
With no --allow, only loopback may connect and moat listens on loopback only.

Options:
  --host ADDR            Listen on this address only (default: 127.0.0.1 and ::1
                         without --allow; :: (all, IPv4 and IPv6) with --allow)
  --port N               Port (default 4320; 0 picks a free one)
  --allow RULE           Allow an address or CIDR; repeat or comma-separate
  --allow-file F         Read allow rules from F (# comments, blank lines ok)
  --deny RULE            Refuse an address or CIDR even if allowed; wins over --allow
  --root DIR             Serve files under DIR (default: current folder)
  --max-conns N          Most connections at once (default 512)
  --idle-timeout SECS    Close connections idle this long (default 300)
  --handshake-timeout S  A moat client must finish its handshake within S (default 10)
  --max-frame BYTES      Largest frame accepted (default ${DEFAULT_MAX_FRAME_SIZE})
  --max-line BYTES       Longest chat line (default 8192)
  --reply TEXT           Answer every chat line with TEXT (for unattended servers)
  --no-plain             Refuse plain-text clients (nc, telnet)
  --log FILE             Append the JSON audit log to FILE (default: stderr)
  --vault DIR            Accept shipped logs from allowed peers into DIR
  --seal-interval SECS   Seal a vault set up with moat vault init this often,
                         even when nothing arrived (default 60)
  --syslog-port N        Also take syslog over TCP (RFC 6587 octet-counted or
                         newline framing, RFC 5424 or RFC 3164) from allowed
                         peers on port N of the same hosts, into --vault: each
                         peer's messages are source PEER/syslog, stored as sent
  --syslog-max BYTES     Longest syslog message; a longer one is refused and
                         its connection closed (default 65536)
  --print-systemd-unit   Print a least-privilege systemd unit that runs moat
                         serve with these options, and exit (docs/DEPLOY.md)
  -h, --help             Show this help

Lines typed on stdin go to every chat client as "operator".
`,
  get: `Usage: moat get FILE:<path> [options]

Fetch <path> (relative to the server's root) into the current folder. The file
is written to <out>.moat-part, its size and digest checked against the
server's, and only then renamed to <out>.

Options:
  --server HOST:PORT  Server (default $MOAT_SERVER, else 127.0.0.1:4320)
  -o, --out FILE      Save as FILE (default: the path's last segment)
  --force             Replace an existing file
  --resume            Continue an interrupted get from <out>.moat-part
  --digest NAME       Whole-file check: crc32 (default: catches truncation and
                      corruption at no cost) or sha256 (a digest to compare
                      with a published one; costs ~0.65 s of CPU per GiB on
                      each side)
  --max-frame BYTES   Largest frame accepted (default ${DEFAULT_MAX_FRAME_SIZE})
  --timeout SECS      Give up when the server does not answer for SECS: to
                      connect and finish the handshake, or between two
                      chunks of the file (default 60)
  -h, --help          Show this help
`,
  ship: `Usage: moat ship [options] FILE... | -

Follow each FILE like tail -F (survives rotation by rename and truncation,
waits for a file that does not exist yet), or read stdin with "-", and stream
every line to the server's vault. Each line gets a sequence number; the server
acknowledges only what it has fsync'd, and the shipper keeps everything else
in an on-disk spool and resends it after a reconnect. A restarted shipper
continues exactly where it stopped. With "-", moat exits once every line was
acknowledged.

Options:
  --server HOST:PORT  Server (default $MOAT_SERVER, else 127.0.0.1:4320)
  --source NAME       Name of this log stream in the vault (default: hostname)
  --state FILE        Position and spool (default: $XDG_STATE_HOME/moat/…)
  --spool-size BYTES  Bound on the spool; when full, reading pauses, loudly
                      (default 268435456)
  --timeout SECS      Give up when the server does not answer for SECS: to
                      connect and finish the handshake (default 60)
  -h, --help          Show this help
`,
  vault: `Usage: moat vault init DIR
       moat vault verify DIR [--key KEY | --key-file FILE]
       moat vault ls DIR
       moat vault cat DIR [--source NAME] [--since TIME]

init    makes DIR a sealed vault (or seals an unsealed one) and prints its
        verification key once: keep it off the vault host. moat serve --vault
        then seals every --seal-interval with a key that evolves one way.
verify  checks every record's checksum and hash chain, and with the key every
        seal; exits 0 only if nothing is damaged, else names the first bad
        point. Records after the last seal are reported as an unsealed tail.
ls      lists the sources in a vault: records, first and last time.
cat     prints stored lines in order (per source by sequence number; sources
        merged by receive time). On a terminal, control characters are escaped.

Options:
  --key KEY       The verification key printed by init
  --key-file F    Read the verification key from file F
  --source NAME   Only this source: its name, or PEER/NAME
  --since TIME    Only records received at or after TIME: an ISO 8601 date
                  or time, or a duration ago such as 90s, 15m, 2h, 7d
  -h, --help      Show this help
`,
  chat: `Usage: moat chat [options]

Send each line typed on stdin; print each line received, tagged with its sender.
Ctrl-D (end of input) leaves.

Options:
  --server HOST:PORT  Server (default $MOAT_SERVER, else 127.0.0.1:4320)
  --timeout SECS      Give up when the server does not answer for SECS: to
                      connect and finish the handshake (default 60)
  -h, --help          Show this help
`,
};

HELP.serve += SERVE_SECURITY_HELP;
HELP.get += CLIENT_SECURITY_HELP;
HELP.chat += CLIENT_SECURITY_HELP;
HELP.ship += CLIENT_SECURITY_HELP;
HELP.cert = `Usage: moat cert [--out DIR] [--name HOST|IP]... [options]

Make an ECDSA P-256 key and a self-signed certificate (CA:FALSE, one
subjectAltName per --name; default localhost, 127.0.0.1 and ::1) for
moat serve --tls-cert/--tls-key, or for a client's --cert/--key. Prints its
SHA-256 fingerprint, which clients give to --pin (or servers to --allow-cert).

Options:
  --out DIR       Write DIR/moat-cert.pem and DIR/moat-key.pem (default: .)
  --name NAME     A DNS name or IP address the certificate is for; repeatable
  --days N        Valid for N days (default 825)
  --force         Replace existing files
  -h, --help      Show this help
`;

/** Clients' TLS/token settings from their options, announcing first-use trust. */
function clientSecurityFrom(values: Parameters<typeof clientSecurity>[0]) {
  return clientSecurity(values, {
    env: process.env,
    onNewHost: (host, fp, file) =>
      console.error(
        `moat: trusting ${host} on first use: ${fp} (remembered in "${file}")`,
      ),
  });
}

/** `--timeout SECS` of get, chat and ship, in ms. */
function timeoutOption(value: string | undefined): number {
  const secs = intOption(value, "timeout", DEFAULT_CLIENT_TIMEOUT_MS / 1000, 1);
  return secs * 1000;
}

async function certCommand(args: string[]) {
  const { values } = parse(args, {
    out: { type: "string" },
    name: { type: "string", multiple: true },
    days: { type: "string" },
    force: { type: "boolean" },
  }, false);
  if (values.help) return void console.log(HELP.cert);
  const dir = values.out ?? ".";
  const certFile = path.join(dir, "moat-cert.pem");
  const keyFile = path.join(dir, "moat-key.pem");
  if (!values.force) {
    for (const f of [certFile, keyFile]) {
      if (fs.existsSync(f)) {
        throw new MoatError(
          "ERR_EXISTS",
          `"${f}" exists: use --force to replace it`,
          ExitCode.Exists,
        );
      }
    }
  }
  const made = await createSelfSignedCert({
    names: values.name ?? [],
    days: intOption(values.days, "days", 825, 1),
  });
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.writeFileSync(keyFile, made.key, { mode: 0o600 });
  fs.chmodSync(keyFile, 0o600);
  fs.writeFileSync(certFile, made.cert, { mode: 0o644 });
  console.log(made.fingerprint);
  console.error(`moat: wrote ${certFile} and ${keyFile} (mode 0600)`);
  console.error(
    `moat: SHA-256 fingerprint ${colonFingerprint(made.fingerprint)}`,
  );
}

function fail(message: string, code: number = ExitCode.Failure): never {
  console.error(`moat: ${message}`);
  process.exit(code);
}

function parse<
  T extends Record<
    string,
    { type: "string" | "boolean"; multiple?: boolean; short?: string }
  >,
>(
  args: string[],
  options: T,
  allowPositionals: boolean,
) {
  try {
    return parseArgs({
      args,
      options: { help: { type: "boolean", short: "h" }, ...options },
      allowPositionals,
      strict: true,
      tokens: true,
    });
  } catch (err) {
    throw new UsageError(`${(err as Error).message.split("\n")[0]}`);
  }
}

function intOption(
  value: string | undefined,
  name: string,
  fallback: number,
  min = 0,
): number {
  if (value === undefined) return fallback;
  if (
    !/^\d+$/.test(value) || Number(value) < min ||
    !Number.isSafeInteger(Number(value))
  ) {
    throw new UsageError(
      `Invalid --${name} "${value}": expected an integer ≥ ${min}`,
    );
  }
  return Number(value);
}

function serverAddr(value: string | undefined) {
  return parseServerAddr(value ?? process.env.MOAT_SERVER ?? "127.0.0.1:4320");
}

/**
 * Lines of stdin, split on LF only (a lone CR stays in the line, where the
 * chat escaper shows it, instead of silently starting a new message).
 */
async function* stdinLines(): AsyncIterable<string> {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const chunk of process.stdin) {
    buf += typeof chunk === "string"
      ? chunk
      : decoder.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      yield line.endsWith("\r") ? line.slice(0, -1) : line;
    }
  }
  buf += decoder.decode();
  if (buf !== "") yield buf;
}

async function serve(args: string[]) {
  const { values, tokens } = parse(args, {
    ...SERVE_SECURITY_OPTIONS,
    host: { type: "string" },
    port: { type: "string" },
    allow: { type: "string", multiple: true },
    "allow-file": { type: "string", multiple: true },
    deny: { type: "string", multiple: true },
    root: { type: "string" },
    "max-conns": { type: "string" },
    "idle-timeout": { type: "string" },
    "handshake-timeout": { type: "string" },
    "max-frame": { type: "string" },
    "max-line": { type: "string" },
    reply: { type: "string" },
    "no-plain": { type: "boolean" },
    log: { type: "string" },
    vault: { type: "string" },
    "seal-interval": { type: "string" },
    "syslog-port": { type: "string" },
    "syslog-max": { type: "string" },
    "print-systemd-unit": { type: "boolean" },
  }, false);
  if (values.help) return void console.log(HELP.serve);

  const allow = [...(values.allow ?? [])];
  for (const file of values["allow-file"] ?? []) {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      throw new UsageError(
        `Cannot read --allow-file "${file}": ${
          (err as NodeJS.ErrnoException).code ?? err
        }`,
      );
    }
    allow.push(...splitRules(text));
  }
  const allowlist = compileAllowlist({ allow, deny: values.deny ?? [] });
  const jail = await createJail(values.root ?? ".");
  const port = intOption(values.port, "port", 4320);
  if (port > 65535) {
    throw new UsageError(`Invalid --port "${port}": expected 0-65535`);
  }
  if (values["print-systemd-unit"]) {
    const runtime = runtimeInfo().runtime === "deno" ? "deno" : "bun";
    process.stdout.write(renderSystemdUnit({
      launcher: TARGET === "script"
        ? {
          executable: process.execPath,
          script: import.meta.filename ?? "main.ts",
          runtime,
        }
        : { executable: process.execPath },
      flags: tokens.flatMap((t) =>
        t.kind === "option" ? [{ name: t.name, value: t.value }] : []
      ),
      cwd: process.cwd(),
      allowlist,
      port,
      extraPorts: [syslogOptions(values)?.port ?? []].flat(),
      maxConns: intOption(values["max-conns"], "max-conns", 512, 1),
      version: VERSION,
    }));
    return;
  }

  let sink: (line: string) => void;
  if (values.log) {
    let fd: number;
    try {
      fd = fs.openSync(values.log, "a", 0o640);
    } catch (err) {
      throw new UsageError(
        `Cannot open --log "${values.log}": ${
          (err as NodeJS.ErrnoException).code ?? err
        }`,
      );
    }
    sink = (line) => fs.writeSync(fd, line + "\n");
  } else {
    sink = (line) => process.stderr.write(line + "\n");
  }
  const audit = new AuditLog(sink);

  const syslog = syslogOptions(values);
  let vault: Vault | undefined;
  if (values.vault !== undefined) {
    try {
      vault = await openVault(values.vault, {
        onEvent: (e) => audit.write("vault_repair", { ...e }),
        sealIntervalMs:
          intOption(values["seal-interval"], "seal-interval", 60, 1) * 1000,
        onSeal: (e) =>
          audit.write(
            e.type === "sealed" ? "vault_sealed" : "vault_seal_failed",
            { ...e },
          ),
      });
    } catch (err) {
      if (err instanceof UsageError) throw err;
      throw new UsageError(
        `Cannot open --vault "${values.vault}": ${(err as Error).message}`,
      );
    }
    if (!vault.sealed) {
      audit.write("vault_unsealed", {
        dir: vault.dir,
        warning:
          "vault is NOT sealed: records are hash-chained, but whoever controls this host can rewrite them " +
          "undetected; run moat vault init on it (with the server stopped) to seal it",
      });
    }
  }

  const security = serverSecurity(values, process.env);
  const net = getNet();
  const make = (hosts: string[]) =>
    new Server({
      net,
      hosts,
      port,
      allowlist,
      jail,
      audit,
      version: VERSION,
      maxConns: intOption(values["max-conns"], "max-conns", 512, 1),
      idleTimeoutMs: intOption(values["idle-timeout"], "idle-timeout", 300, 1) *
        1000,
      handshakeTimeoutMs:
        intOption(values["handshake-timeout"], "handshake-timeout", 10, 1) *
        1000,
      maxFrameSize: intOption(
        values["max-frame"],
        "max-frame",
        DEFAULT_MAX_FRAME_SIZE,
        1024,
      ),
      maxLine: intOption(values["max-line"], "max-line", 8192, 1),
      plain: !values["no-plain"],
      ...security,
      ...(values.reply !== undefined && { reply: values.reply }),
      onChat: (line) => console.log(formatChatLine(line)),
      ...(vault && { vault }),
      ...(syslog && { syslog }),
    });

  const hosts = values.host !== undefined
    ? [values.host]
    : allowlist.loopbackOnly
    ? ["127.0.0.1", "::1"]
    : ["::"];
  let server = make(hosts);
  // Installed before listening: a signal that follows the "listening" line
  // at once must still shut down cleanly.
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    audit.write("signal", { signal });
    await server.close();
    await vault?.close();
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
  try {
    await server.listen();
  } catch (err) {
    // A host without IPv6 still serves IPv4; a taken port is fatal.
    if (values.host !== undefined || err instanceof AddressInUseError) {
      throw err;
    }
    server = make([allowlist.loopbackOnly ? "127.0.0.1" : "0.0.0.0"]);
    await server.listen();
  }

  // The operator's console: each stdin line goes to every chat client.
  (async () => {
    try {
      for await (const line of stdinLines()) if (line !== "") server.say(line);
    } catch {
      // No usable stdin (daemonised): the server runs on without a console.
    }
  })();
  await new Promise(() => {});
}

/** The --syslog-port and --syslog-max options; undefined without a port. */
function syslogOptions(
  values: { "syslog-port"?: string; "syslog-max"?: string; vault?: string },
) {
  if (values["syslog-port"] === undefined) {
    if (values["syslog-max"] !== undefined) {
      throw new UsageError("--syslog-max needs --syslog-port");
    }
    return undefined;
  }
  if (values.vault === undefined) {
    throw new UsageError(
      "--syslog-port needs --vault DIR (syslog messages are stored in the vault)",
    );
  }
  const port = intOption(values["syslog-port"], "syslog-port", 0);
  if (port > 65535) {
    throw new UsageError(`Invalid --syslog-port "${port}": expected 0-65535`);
  }
  const maxMessage = intOption(
    values["syslog-max"],
    "syslog-max",
    DEFAULT_SYSLOG_MAX,
    1,
  );
  if (maxMessage > DEFAULT_MAX_LINE_BYTES) {
    throw new UsageError(
      `Invalid --syslog-max "${maxMessage}": the vault stores lines of at most ${DEFAULT_MAX_LINE_BYTES} bytes`,
    );
  }
  return { port, maxMessage };
}

function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return "--:--";
  const m = Math.floor(s / 60);
  return `${String(m).padStart(2, "0")}:${
    String(Math.floor(s % 60)).padStart(2, "0")
  }`;
}

/** A progress bar on stderr, redrawn at most 10 times a second. */
function progressBar(label: string) {
  const started = performance.now();
  let last = 0;
  let base = 0;
  let total = 0;
  return {
    start(size: number, offset: number) {
      base = offset;
      total = size;
    },
    update(received: number, expected: number, force = false) {
      const now = performance.now();
      if (!force && now - last < 100) return;
      last = now;
      const done = base + received;
      const secs = (now - started) / 1000;
      const rate = secs > 0 ? received / secs : 0;
      const frac = total > 0 ? done / total : 1;
      const width = 24;
      const fill = Math.round(frac * width);
      const eta = rate > 0 ? (expected - received) / rate : Infinity;
      process.stderr.write(
        `\r${label} [${"#".repeat(fill)}${"-".repeat(width - fill)}] ${
          (frac * 100).toFixed(0).padStart(3)
        }% ` +
          `${formatBytes(done)}/${formatBytes(total)} ${
            formatBytes(rate)
          }/s ETA ${formatDuration(eta)}\x1b[K`,
      );
    },
    end() {
      process.stderr.write("\n");
    },
  };
}

async function getCommand(args: string[]) {
  const { values, positionals } = parse(args, {
    server: { type: "string" },
    out: { type: "string", short: "o" },
    force: { type: "boolean" },
    resume: { type: "boolean" },
    digest: { type: "string" },
    "max-frame": { type: "string" },
    timeout: { type: "string" },
    ...CLIENT_SECURITY_OPTIONS,
  }, true);
  if (values.help) return void console.log(HELP.get);
  const digest = values.digest ?? DEFAULT_DIGEST;
  if (!isDigestName(digest)) {
    throw new UsageError(
      `Unknown --digest "${escapeText(digest)}": use ${DIGESTS.join(" or ")}`,
    );
  }
  if (positionals.length !== 1) {
    throw new UsageError(
      "get takes exactly one FILE:<path> (see moat get --help)",
    );
  }
  const request = positionals[0]!.startsWith("FILE:")
    ? positionals[0]!.slice(5)
    : positionals[0]!;
  if (request === "") throw new UsageError("Empty path in FILE:<path>");
  const out = values.out ?? path.posix.basename(request);
  if (out === "" || out === "." || out === "..") {
    throw new UsageError(
      `Cannot derive a file name from "${escapeText(request)}": use -o FILE`,
    );
  }
  const client: ClientOptions = {
    net: getNet(),
    server: serverAddr(values.server),
    version: VERSION,
    maxFrameSize: intOption(
      values["max-frame"],
      "max-frame",
      DEFAULT_MAX_FRAME_SIZE,
      1024,
    ),
    timeoutMs: timeoutOption(values.timeout),
    ...clientSecurityFrom(values),
  };
  const tty = process.stderr.isTTY === true;
  const bar = tty ? progressBar(path.basename(out)) : undefined;
  const started = performance.now();
  let result;
  try {
    result = await get(client, {
      path: request,
      out,
      ...(values.force !== undefined && { force: values.force }),
      ...(values.resume !== undefined && { resume: values.resume }),
      digest,
      ...(bar && { onStart: bar.start, onProgress: bar.update }),
    });
  } catch (err) {
    bar?.end();
    if (
      err instanceof MoatError && err.code === "ERR_CONNECTION_CLOSED" &&
      fs.existsSync(out + ".moat-part")
    ) {
      throw new MoatError(
        err.code,
        `${err.message}; re-run with --resume to continue`,
        err.exitCode,
      );
    }
    throw err;
  }
  if (bar) {
    bar.update(result.bytes, result.bytes, true);
    bar.end();
  }
  const secs = (performance.now() - started) / 1000;
  const rate = secs > 0 ? result.bytes / secs / 2 ** 30 : 0;
  console.error(
    `moat: saved ${escapeText(out)} (${result.size} bytes${
      result.offset ? `, resumed at ${result.offset}` : ""
    }, ` +
      `${result.digestName} ${result.digest}) in ${secs.toFixed(2)} s, ${
        rate.toFixed(2)
      } GiB/s`,
  );
}

async function chatCommand(args: string[]) {
  const { values } = parse(args, {
    server: { type: "string" },
    timeout: { type: "string" },
    ...CLIENT_SECURITY_OPTIONS,
  }, false);
  if (values.help) return void console.log(HELP.chat);
  const server = serverAddr(values.server);
  await chat({
    net: getNet(),
    server,
    version: VERSION,
    timeoutMs: timeoutOption(values.timeout),
    ...clientSecurityFrom(values),
  }, {
    input: stdinLines(),
    output: (line) => console.log(line),
    onWelcome: (w) =>
      console.error(
        `moat: connected to ${
          values.server ?? process.env.MOAT_SERVER ?? "127.0.0.1:4320"
        } as ${escapeText(w.name)} (${escapeText(w.peer)}); Ctrl-D leaves`,
      ),
  });
}

async function shipCommand(args: string[]) {
  const parsed = parse(args, {
    server: { type: "string" },
    source: { type: "string" },
    state: { type: "string" },
    "spool-size": { type: "string" },
    timeout: { type: "string" },
    ...CLIENT_SECURITY_OPTIONS,
  }, true);
  const values = parsed.values;
  if (values.help) return void console.log(HELP.ship);
  const positionals: string[] = parsed.positionals;
  if (positionals.length === 0) {
    throw new UsageError("ship needs FILE... or - (see moat ship --help)");
  }
  if (positionals.includes("-") && positionals.length > 1) {
    throw new UsageError('ship reads either files or stdin ("-"), not both');
  }
  const server = serverAddr(values.server);
  const source = values.source ?? (await import("node:os")).hostname();
  const inputs = positionals.map((p) => (p === "-" ? p : path.resolve(p)));
  const statePath = values.state ??
    defaultStatePath({ source, server: `${server.hostname}:${server.port}` });
  const stop = new AbortController();
  process.on("SIGINT", () => stop.abort());
  process.on("SIGTERM", () => stop.abort());
  const last = await ship({
    client: {
      net: getNet(),
      server,
      version: VERSION,
      timeoutMs: timeoutOption(values.timeout),
      ...clientSecurityFrom(values),
    },
    inputs,
    stdin: process.stdin as AsyncIterable<Uint8Array>,
    statePath,
    source,
    ...(values["spool-size"] !== undefined && {
      spoolBytes: intOption(values["spool-size"], "spool-size", 0, 1 << 20),
    }),
    signal: stop.signal,
    onEvent: (e) => {
      switch (e.type) {
        case "connected":
          console.error(
            `moat: shipping "${
              escapeText(e.source)
            }" to ${e.server} as ${e.peer}; server holds ${e.lastSeq} records`,
          );
          break;
        case "disconnected":
          console.error(
            `moat: ${e.message}; retrying in ${
              (e.retryMs / 1000).toFixed(1)
            } s (lines are kept in the spool)`,
          );
          break;
        case "spool":
          if (e.event.type === "full") {
            console.error(
              `moat: SPOOL FULL (${e.event.usedBytes} of ${e.event.maxBytes} bytes): reading is paused until the server acknowledges; no line is dropped`,
            );
          } else if (e.event.type === "resumed") {
            console.error("moat: spool has room again; reading resumed");
          } else if (e.event.type === "checkpoint_failed") {
            console.error(
              `moat: cannot save the shipper state: ${
                (e.event.error as Error)?.message ?? e.event.error
              }`,
            );
          } else {
            console.error(
              `moat: spool repaired after a crash: ${JSON.stringify(e.event)}`,
            );
          }
          break;
        case "follow":
          if (e.event.type === "skipped") {
            console.error(
              `moat: WARNING: ${e.event.path} rotated twice before it was read; not shipped: ${
                e.event.files.join(", ")
              }`,
            );
          } else if (
            e.event.type === "rotated" || e.event.type === "truncated" ||
            e.event.type === "waiting"
          ) {
            console.error(`moat: ${escapeText(e.event.path)} ${e.event.type}`);
          }
          break;
        case "done":
          break;
      }
    },
  });
  console.error(`moat: ${last} records acknowledged by the server`);
}

/** Parses --since: ISO 8601, or a duration ago (90s, 15m, 2h, 7d). */
function parseSince(text: string): number {
  const m = /^(\d+)(s|m|h|d)$/.exec(text);
  if (m) {
    const unit =
      { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[m[2] as "s" | "m" | "h" | "d"];
    return Date.now() - Number(m[1]) * unit;
  }
  const t = Date.parse(text);
  if (!/^\d{4}-\d{2}-\d{2}/.test(text) || Number.isNaN(t)) {
    throw new UsageError(
      `Invalid --since "${
        escapeText(text)
      }": expected an ISO 8601 time or a duration like 15m`,
    );
  }
  return t;
}

async function vaultCommand(args: string[]) {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === "-h" || sub === "--help") {
    return void console.log(HELP.vault);
  }
  const { values, positionals } = parse(rest, {
    source: { type: "string" },
    since: { type: "string" },
    key: { type: "string" },
    "key-file": { type: "string" },
  }, true);
  if (values.help) return void console.log(HELP.vault);
  if (positionals.length !== 1) {
    throw new UsageError(
      `vault ${escapeText(sub)} takes one DIR (see moat vault --help)`,
    );
  }
  const dir = positionals[0]!;
  if (sub === "init") {
    const made = await initVault(dir);
    console.log(made.verificationKey);
    console.error(
      `Vault "${escapeText(made.dir)}" (id ${made.id}) is ${
        made.existed ? "now " : ""
      }sealed. Its verification key ` +
        `is printed above, once, and stored nowhere: keep it off this host (a password manager, paper). ` +
        `Check the vault with: moat vault verify DIR --key KEY` +
        (made.existed
          ? ". Records stored before now were not protected until the first seal covers them."
          : ""),
    );
    return;
  }
  if (!fs.existsSync(path.join(dir, "VAULT"))) {
    throw new UsageError(`"${escapeText(dir)}" is not a moat vault`);
  }
  if (sub === "verify") return await verifyCommand(dir, values);
  if (sub === "ls") {
    const rows = await listSources(dir);
    console.log(["PEER", "SOURCE", "RECORDS", "FIRST", "LAST"].join("\t"));
    for (const r of rows) {
      const iso = (
        t: number | undefined,
      ) => (t ? new Date(t).toISOString() : "-");
      console.log(
        [
          escapeText(r.peer),
          escapeText(r.name),
          r.records,
          iso(r.firstRecvTs),
          iso(r.lastRecvTs),
        ].join("\t"),
      );
    }
    return;
  }
  if (sub !== "cat") {
    throw new UsageError(
      `Unknown vault command "${escapeText(sub)}" (init, verify, ls or cat)`,
    );
  }
  const tty = process.stdout.isTTY === true;
  const decoder = new TextDecoder();
  const out: Uint8Array[] = [];
  let size = 0;
  const flush = async () => {
    if (size > 0) await writeStdout(Buffer.concat(out));
    out.length = 0;
    size = 0;
  };
  for await (
    const rec of readRecords(dir, {
      ...(values.source !== undefined && { source: values.source }),
      ...(values.since !== undefined && { since: parseSince(values.since) }),
    })
  ) {
    // A log line is attacker-controlled: raw into a pipe, escaped on a terminal.
    const line = tty
      ? new TextEncoder().encode(escapeText(decoder.decode(rec.line)))
      : rec.line;
    out.push(line);
    if (!rec.partial) out.push(NEWLINE);
    size += line.length + 1;
    if (size > 1 << 20) await flush();
  }
  await flush();
}

/** `moat vault verify`: prints the report; exits 5 (integrity) on damage. */
async function verifyCommand(
  dir: string,
  values: { key?: string; "key-file"?: string },
) {
  if (values.key !== undefined && values["key-file"] !== undefined) {
    throw new UsageError("Give --key or --key-file, not both");
  }
  let key = values.key;
  if (values["key-file"] !== undefined) {
    try {
      key = fs.readFileSync(values["key-file"], "utf8");
    } catch (err) {
      throw new UsageError(
        `Cannot read --key-file "${values["key-file"]}": ${
          (err as NodeJS.ErrnoException).code ?? err
        }`,
      );
    }
  }
  let report;
  try {
    report = await verifyVault(dir, key === undefined ? {} : { key });
  } catch (err) {
    if (err instanceof TypeError) throw new UsageError(err.message);
    throw err;
  }
  const iso = (t: number) => new Date(t).toISOString();
  console.log(
    `vault ${report.id}: ${report.seals} seal(s)${
      report.lastSealTime !== undefined
        ? `, last at ${iso(report.lastSealTime)}`
        : ""
    }${report.keyed ? ", verified with the key" : ""}`,
  );
  for (const s of report.sources) {
    const tail = s.unsealed > 0
      ? `, unsealed tail (${s.unsealed} records)`
      : "";
    console.log(
      `  ${
        escapeText(s.label)
      }: ${s.records} records, ${s.sealedSeq} sealed${tail}`,
    );
    if (s.torn) {
      console.log(
        `  ${
          escapeText(s.label)
        }: ${s.torn.bytes} bytes after the last record are not a whole record ` +
          `(a write in progress or a torn write, cut when the vault is next opened; not verified)`,
      );
    }
  }
  if (!report.keyed) {
    console.log(
      "WARNING: no --key: checksums and hash chains checked, seals NOT verified",
    );
  }
  if (report.unsealed > 0) {
    console.log(
      `unsealed tail (${report.unsealed} records): chained but not yet covered by a seal, so not verified`,
    );
  }
  for (const p of report.problems) {
    console.log(`DAMAGED: ${escapeText(p.message)}`);
  }
  if (!report.ok) {
    throw new MoatError(
      "ERR_INTEGRITY",
      `Vault "${escapeText(dir)}" failed verification`,
      ExitCode.Integrity,
    );
  }
  console.log(
    report.keyed
      ? "OK: every record and seal is intact"
      : "OK: every record and chain is intact",
  );
}

/**
 * Writes all of `bytes` to stdout, synchronously so nothing is pending at
 * exit, coping with short writes and a non-blocking pipe (EAGAIN).
 */
async function writeStdout(bytes: Uint8Array) {
  let off = 0;
  while (off < bytes.length) {
    try {
      off += fs.writeSync(1, bytes, off, bytes.length - off);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EAGAIN") throw err;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

const NEWLINE = Uint8Array.of(0x0a);

function version() {
  const rt = runtimeInfo();
  console.log(`moat ${VERSION} (${rt.runtime} ${rt.version}; ${TARGET})`);
}

async function main(argv: string[]) {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case "help":
    case "-h":
    case "--help": {
      const topic = rest[0];
      if (topic !== undefined && HELP[topic] === undefined) {
        throw new UsageError(`Unknown command "${topic}"`);
      }
      console.log(HELP[topic ?? "main"]);
      return;
    }
    case "-V":
    case "--version":
    case "version":
      return version();
    case "serve":
      return await serve(rest);
    case "get":
      return await getCommand(rest);
    case "chat":
      return await chatCommand(rest);
    case "cert":
      return await certCommand(rest);
    case "ship":
      return await shipCommand(rest);
    case "vault":
      return await vaultCommand(rest);
    default:
      throw new UsageError(
        `Unknown command "${escapeText(command)}" (see moat help)`,
      );
  }
}

try {
  await main(process.argv.slice(2));
  process.exit(0);
} catch (err) {
  if (err instanceof MoatError) fail(err.message, err.exitCode);
  if (err instanceof RangeError || err instanceof TypeError) {
    fail(err.message, ExitCode.Failure);
  }
  fail(`internal error: ${err instanceof Error ? err.message : String(err)}`);
}
