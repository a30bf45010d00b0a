/**
 * `moat serve`: listen, refuse every peer not allowed, serve files, chat and
 * the vault, and log everything; or print a systemd unit that does, or the
 * nftables ruleset that enforces the allowlist in the kernel.
 *
 * @module
 */

import * as fs from "node:fs";
import process from "node:process";
import { getNet, runtimeInfo } from "../lib/net/mod.ts";
import { compileAllowlist, splitRules } from "../lib/allowlist.ts";
import { createJail } from "../lib/jail.ts";
import { AuditLog, auditRateLimit } from "../lib/audit.ts";
import { Server } from "../lib/server/mod.ts";
import { formatChatLine } from "../lib/chat.ts";
import { AddressInUseError, UsageError } from "../lib/errors.ts";
import { escapeText } from "../lib/text.ts";
import { VERSION } from "../lib/version.ts";
import { renderSystemdUnit } from "../lib/systemd.ts";
import { renderNftables } from "../lib/nftables.ts";
import { DEFAULT_MAX_FRAME_SIZE } from "../lib/framer.ts";
import { MIN_MAX_FRAME_SIZE } from "../lib/protocol.ts";
import {
  DEFAULT_AUDIT_RATE,
  DEFAULT_CHAT_RATE,
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_MAX_CONNS,
  DEFAULT_MAX_LINE,
  DEFAULT_PORT,
  DEFAULT_SEND_BUFFER_BYTES,
} from "../lib/limits.ts";
import {
  DEFAULT_MAX_LINE_BYTES,
  DEFAULT_SEAL_INTERVAL_MS,
  openVault,
  type Vault,
} from "../lib/vault/store.ts";
import { DEFAULT_SYSLOG_MAX } from "../lib/syslog.ts";
import { stdinLines } from "./_stdin.ts";
import {
  type CommandSpec,
  COMMON_EXITS,
  describeFsError,
  formatHelp,
  type OptionTable,
  type OptionValues,
  parseCommand,
  type RunContext,
} from "./options.ts";
import { printLine, writeStdoutText } from "./output.ts";
import {
  SERVE_SECURITY_ENV,
  SERVE_SECURITY_OPTIONS,
  serverSecurity,
} from "./secure_cli.ts";

/** The largest TCP port. */
const MAX_PORT = 65535;

const SERVE_OPTIONS = {
  host: {
    type: "string",
    placeholder: "ADDR",
    description: "Listen on this address only",
    defaultText:
      "127.0.0.1 and ::1 without --allow; :: (all, IPv4 and IPv6) with --allow",
  },
  port: {
    type: "integer",
    placeholder: "N",
    min: 0,
    max: MAX_PORT,
    default: DEFAULT_PORT,
    description: "Port; 0 picks a free one",
  },
  allow: {
    type: "string",
    placeholder: "RULE",
    multiple: true,
    description: "Allow an address or CIDR; or a comma-separated list",
  },
  "allow-file": {
    type: "file",
    placeholder: "F",
    multiple: true,
    description: "Read allow rules from F (# comments, blank lines ok)",
  },
  deny: {
    type: "string",
    placeholder: "RULE",
    multiple: true,
    description: "Refuse an address or CIDR even if allowed; wins over --allow",
  },
  root: {
    type: "string",
    placeholder: "DIR",
    default: ".",
    defaultText: "the current folder",
    description: "Serve files under DIR",
  },
  "max-conns": {
    type: "integer",
    placeholder: "N",
    min: 1,
    default: DEFAULT_MAX_CONNS,
    description: "Most connections at once",
  },
  "idle-timeout": {
    type: "integer",
    placeholder: "SECS",
    min: 1,
    default: DEFAULT_IDLE_TIMEOUT_MS / 1000,
    description: "Close connections idle this long",
  },
  "handshake-timeout": {
    type: "integer",
    placeholder: "SECS",
    min: 1,
    default: DEFAULT_HANDSHAKE_TIMEOUT_MS / 1000,
    description: "A moat client must finish its handshake within SECS",
  },
  "max-frame": {
    type: "integer",
    placeholder: "BYTES",
    min: MIN_MAX_FRAME_SIZE,
    default: DEFAULT_MAX_FRAME_SIZE,
    description: "Largest frame accepted",
  },
  "max-line": {
    type: "integer",
    placeholder: "BYTES",
    min: 1,
    default: DEFAULT_MAX_LINE,
    description: "Longest chat line",
  },
  "chat-rate": {
    type: "integer",
    placeholder: "N",
    min: 0,
    default: DEFAULT_CHAT_RATE,
    description:
      "Chat lines per second from one peer address (bursts of 2 s worth; the whole room 20 times N); past it the peer is not read until the rate allows, so no line is dropped; 0 is unlimited",
  },
  "send-buffers": {
    type: "integer",
    placeholder: "MIB",
    min: 1,
    max: 1_048_576,
    default: DEFAULT_SEND_BUFFER_BYTES / 2 ** 20,
    description:
      "Memory all file transfers together may hold in send buffers, in MiB; transfers take smaller chunks when it is tight",
  },
  "audit-rate": {
    type: "integer",
    placeholder: "N",
    min: 0,
    default: DEFAULT_AUDIT_RATE,
    description:
      "Audit lines per second per peer address and event kind (bursts of 10 s worth; all peers 20 times N); what it holds back is counted in suppressed lines; 0 is unlimited",
  },
  reply: {
    type: "string",
    placeholder: "TEXT",
    description: "Answer every chat line with TEXT (for unattended servers)",
  },
  "no-plain": {
    type: "boolean",
    description: "Refuse plain-text clients (nc, telnet)",
  },
  log: {
    type: "string",
    placeholder: "FILE",
    defaultText: "stderr",
    description: "Append the JSON audit log to FILE",
  },
  vault: {
    type: "string",
    placeholder: "DIR",
    description: "Accept shipped logs from allowed peers into DIR",
  },
  "seal-interval": {
    type: "integer",
    placeholder: "SECS",
    min: 1,
    default: DEFAULT_SEAL_INTERVAL_MS / 1000,
    description:
      "Seal a vault set up with moat vault init this often, even when nothing arrived",
  },
  "syslog-port": {
    type: "integer",
    placeholder: "N",
    min: 0,
    max: MAX_PORT,
    description:
      "Also take syslog over TCP (RFC 6587 octet-counted or newline framing, RFC 5424 or RFC 3164) from allowed peers on port N of the same hosts, into --vault: each peer's messages are source PEER/syslog, stored as sent",
  },
  "syslog-max": {
    type: "integer",
    placeholder: "BYTES",
    min: 1,
    default: DEFAULT_SYSLOG_MAX,
    description:
      "Longest syslog message; a longer one is refused and its connection closed",
  },
  "print-systemd-unit": {
    type: "boolean",
    description:
      "Print a least-privilege systemd unit that runs moat serve with these options, and exit (docs/DEPLOY.md)",
  },
  "print-nftables": {
    type: "boolean",
    description:
      "Print an nftables ruleset that drops, in the kernel, new connections to these ports from peers the allowlist refuses, and exit (docs/DEPLOY.md)",
  },
  ...SERVE_SECURITY_OPTIONS,
} as const satisfies OptionTable;

/** `moat serve`'s options, usage and help. */
export const SERVE: CommandSpec<typeof SERVE_OPTIONS> = {
  name: "serve",
  summary:
    "Listen, refuse every peer not allowed, serve files and chat, log everything",
  usage: ["serve [options]"],
  description:
    `Listen (default port ${DEFAULT_PORT}) and serve the files under --root and a chat room to
allowed peers only. Everyone else is refused before a byte is read, and logged.
With no --allow, only loopback may connect and moat listens on loopback only.`,
  options: SERVE_OPTIONS,
  env: SERVE_SECURITY_ENV,
  exits: [
    {
      code: 0,
      description:
        "stopped by SIGINT or SIGTERM (or the unit or ruleset was printed)",
    },
    ...COMMON_EXITS.filter((e) => e.code !== 0),
  ],
  notes: `Lines typed on stdin go to every chat client as "operator".`,
};

type ServeValues = OptionValues<typeof SERVE_OPTIONS>;

/**
 * Runs `moat serve` until SIGINT or SIGTERM (which exit 0).
 *
 * @param args The arguments after "serve".
 * @param context The environment, the build target and main.ts's path.
 * @throws {MoatError} A usage error before listening, or a taken port.
 */
export async function serveCommand(
  args: string[],
  context: RunContext,
): Promise<void> {
  const parsed = parseCommand(SERVE, args, context);
  if (parsed.help) return printLine(formatHelp(SERVE));
  const { values, given } = parsed;
  const gave = new Set(given.map((g) => g.name));

  const allow = [...values.allow];
  for (const file of values["allow-file"]) {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      throw new UsageError(
        `Cannot read --allow-file "${escapeText(file)}": ${
          describeFsError(err)
        }`,
      );
    }
    allow.push(...splitRules(text));
  }
  const allowlist = compileAllowlist({ allow, deny: values.deny });
  const jail = await createJail(values.root);
  const syslog = syslogOptions(values, gave);
  if (values["print-systemd-unit"] && values["print-nftables"]) {
    throw new UsageError(
      "--print-systemd-unit and --print-nftables cannot be combined; print one, then the other",
    );
  }
  if (values["print-nftables"]) {
    await writeStdoutText(renderNftables({
      allowlist,
      ports: [values.port, syslog?.port ?? []].flat(),
      fromAllowFiles: values["allow-file"].length > 0,
      version: VERSION,
    }));
    return;
  }
  if (values["print-systemd-unit"]) {
    const runtime = runtimeInfo().runtime === "deno" ? "deno" : "bun";
    await writeStdoutText(renderSystemdUnit({
      launcher: context.target === "script"
        ? { executable: process.execPath, script: context.script, runtime }
        : { executable: process.execPath },
      flags: given,
      cwd: process.cwd(),
      allowlist,
      port: values.port,
      extraPorts: [syslog?.port ?? []].flat(),
      maxConns: values["max-conns"],
      version: VERSION,
    }));
    return;
  }

  let sink: (line: string) => void;
  if (values.log !== undefined) {
    let fd: number;
    try {
      fd = fs.openSync(values.log, "a", 0o640);
    } catch (err) {
      throw new UsageError(
        `Cannot open --log "${escapeText(values.log)}": ${
          describeFsError(err)
        }`,
      );
    }
    sink = (line) => fs.writeSync(fd, line + "\n");
  } else {
    sink = (line) => process.stderr.write(line + "\n");
  }
  const audit = new AuditLog(sink, {
    limit: auditRateLimit(values["audit-rate"]),
  });

  let vault: Vault | undefined;
  if (values.vault !== undefined) {
    try {
      vault = await openVault(values.vault, {
        onEvent: (e) => audit.write("vault_repair", { ...e }),
        sealIntervalMs: values["seal-interval"] * 1000,
        onSeal: (e) =>
          audit.write(
            e.type === "sealed" ? "vault_sealed" : "vault_seal_failed",
            { ...e },
          ),
      });
    } catch (err) {
      if (err instanceof UsageError) throw err;
      throw new UsageError(
        `Cannot open --vault "${escapeText(values.vault)}": ${
          (err as Error).message
        }`,
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

  const security = serverSecurity(values, context.env);
  const net = getNet();
  const make = (hosts: string[]) =>
    new Server({
      net,
      hosts,
      port: values.port,
      allowlist,
      jail,
      audit,
      version: VERSION,
      maxConns: values["max-conns"],
      idleTimeoutMs: values["idle-timeout"] * 1000,
      handshakeTimeoutMs: values["handshake-timeout"] * 1000,
      maxFrameSize: values["max-frame"],
      maxLine: values["max-line"],
      chatRate: values["chat-rate"],
      sendBufferBytes: values["send-buffers"] * 2 ** 20,
      plain: !values["no-plain"],
      ...security,
      ...(values.reply !== undefined && { reply: values.reply }),
      onChat: (line) => printLine(formatChatLine(line)),
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
function syslogOptions(values: ServeValues, gave: Set<string>) {
  const port = values["syslog-port"];
  if (port === undefined) {
    if (gave.has("syslog-max")) {
      throw new UsageError("--syslog-max needs --syslog-port");
    }
    return undefined;
  }
  if (values.vault === undefined) {
    throw new UsageError(
      "--syslog-port needs --vault DIR (syslog messages are stored in the vault)",
    );
  }
  const maxMessage = values["syslog-max"];
  if (maxMessage > DEFAULT_MAX_LINE_BYTES) {
    throw new UsageError(
      `Invalid --syslog-max "${maxMessage}": the vault stores lines of at most ${DEFAULT_MAX_LINE_BYTES} bytes`,
    );
  }
  return { port, maxMessage };
}
