/**
 * `moat serve`: listen, refuse every peer not allowed, serve files, chat and
 * the vault, and log everything; or print a systemd unit that does, or the
 * nftables ruleset that enforces the allowlist in the kernel.
 *
 * @module
 */

import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { getNet, runtimeInfo } from "../lib/net/mod.ts";
import { nativeSha256Batch, nativeSha256Parts } from "../lib/net/sha256.ts";
import { setNativeSha256, setNativeSha256Batch } from "../lib/sha256.ts";
import { setTreeWorker } from "../lib/vault/_tree_chunk.ts";
import {
  type Allowlist,
  compileAllowlist,
  splitRules,
} from "../lib/allowlist.ts";
import { createJail } from "../lib/jail.ts";
import { AuditLog, auditRateLimit } from "../lib/audit.ts";
import { formatAddr, Server } from "../lib/server/mod.ts";
import { formatChatLine } from "../lib/chat.ts";
import { AddressInUseError, UsageError } from "../lib/errors.ts";
import { escapeText } from "../lib/text.ts";
import { VERSION } from "../lib/version.ts";
import { renderSystemdUnit } from "../lib/systemd/mod.ts";
import { renderNftables } from "../lib/nftables.ts";
import { DEFAULT_MAX_FRAME_SIZE } from "../lib/framer.ts";
import { MIN_MAX_FRAME_SIZE } from "../lib/protocol.ts";
import {
  DEFAULT_AUDIT_RATE,
  DEFAULT_CHAT_RATE,
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_MAX_CONNS,
  DEFAULT_MAX_CONNS_PER_PEER,
  DEFAULT_MAX_LINE,
  DEFAULT_PORT,
  DEFAULT_SEND_BUFFER_BYTES,
  DEFAULT_SILENT_AFTER_MS,
} from "../lib/limits.ts";
import {
  DEFAULT_MAX_LINE_BYTES,
  DEFAULT_MAX_SOURCES_PER_PEER,
  DEFAULT_SEAL_INTERVAL_MS,
  openVault,
  type PruneEvent,
  type SourceKey,
  sourceLabel,
  type Vault,
} from "../lib/vault/store.ts";
import { WitnessFeeder } from "../lib/witness/feeder.ts";
import { DEFAULT_SYSLOG_MAX } from "../lib/syslog.ts";
import { SealTracker } from "../lib/server/status.ts";
import { defaultSocketPath, StatusSocket } from "../lib/status_socket.ts";
import {
  DEFAULT_SYSLOG_IDLE_TIMEOUT_MS,
  DEFAULT_SYSLOG_MAX_CONNS,
  DEFAULT_SYSLOG_QUIET_TIMEOUT_MS,
} from "../lib/server/syslog.ts";
import { stdinLines } from "./_stdin.ts";
import { parseDuration } from "./vault.ts";
import {
  checkStreamName,
  isNatsUrl,
  parseNatsUrl,
} from "../lib/vault/nats/url.ts";
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
import {
  printLine,
  printNote,
  printToStderr,
  writeStdoutText,
} from "./output.ts";
import {
  SERVE_SECURITY_ENV,
  SERVE_SECURITY_OPTIONS,
  serverSecurity,
} from "./secure_cli.ts";
import { AuditFile, chooseAuditLog } from "./serve_log.ts";
import { SERVE_WITNESS_OPTIONS, witnessTargets } from "./serve_witness.ts";
import { handleServeSignals } from "./serve_signals.ts";
import { formatBanner } from "./banner.ts";

/** The largest TCP port. */
const MAX_PORT = 65535;
/** Longest wait at shutdown for the witnesses to cosign the last checkpoints. */
const WITNESS_FINISH_MS = 5000;

/** The connection limits `moat serve` and `moat witness` share. */
export const CONNECTION_OPTIONS = {
  "max-conns": {
    type: "integer",
    placeholder: "N",
    min: 1,
    default: DEFAULT_MAX_CONNS,
    description: "Most connections at once",
  },
  "max-conns-per-peer": {
    type: "integer",
    placeholder: "N",
    min: 1,
    default: DEFAULT_MAX_CONNS_PER_PEER,
    description: "Most connections at once from one address, on each port",
  },
  "idle-timeout": {
    type: "integer",
    placeholder: "SECS",
    min: 1,
    default: DEFAULT_IDLE_TIMEOUT_MS / 1000,
    description: "Close connections idle this long",
  },
} as const satisfies OptionTable;

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
  ...CONNECTION_OPTIONS,
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
    defaultText: "stderr, or ./moat-audit.log when the chat is on a terminal",
    description:
      'Append the JSON audit log to FILE ("-": stderr), reopened on SIGHUP; see docs/AUDIT.md',
  },
  vault: {
    type: "string",
    placeholder: "DIR|nats://H:P,…",
    description:
      "Accept shipped logs from allowed peers into DIR, or into a JetStream stream on a NATS cluster (nats://host1:4222,host2:4222,…; needs --vault-cache; see docs/DEPLOY.md)",
  },
  "vault-cache": {
    type: "string",
    placeholder: "DIR",
    description:
      "With --vault nats://…: this front door's local copy of the stream (a directory vault; a new door's starts empty but for the vault's checkpoint.key)",
  },
  "nats-creds": {
    type: "string",
    placeholder: "FILE",
    description:
      "With --vault nats://…: NATS credentials, a .creds file or one line user:password",
  },
  "nats-tls-ca": {
    type: "string",
    placeholder: "FILE",
    description:
      "With --vault nats://…: connect with TLS, trusting the CA in FILE (PEM)",
  },
  "nats-tls-cert": {
    type: "string",
    placeholder: "FILE",
    description: "With --vault nats://…: TLS client certificate (PEM)",
  },
  "nats-tls-key": {
    type: "string",
    placeholder: "FILE",
    description: "With --vault nats://…: TLS client key (PEM)",
  },
  stream: {
    type: "string",
    placeholder: "NAME",
    default: "MOAT",
    description:
      "With --vault nats://…: the JetStream stream (subjects moat.<name>.>)",
  },
  replicas: {
    type: "integer",
    placeholder: "N",
    min: 1,
    max: 5,
    default: 3,
    description:
      "With --vault nats://…: replicas of the stream if moat creates it (an existing one is checked, not changed)",
  },
  "seal-interval": {
    type: "integer",
    placeholder: "SECS",
    min: 1,
    default: DEFAULT_SEAL_INTERVAL_MS / 1000,
    description:
      "Seal a vault set up with moat vault init this often, even when nothing arrived; and log a signed checkpoint of each source whose Merkle tree grew",
  },
  "max-sources-per-peer": {
    type: "integer",
    placeholder: "N",
    min: 1,
    default: DEFAULT_MAX_SOURCES_PER_PEER,
    description:
      "Most vault sources one peer address may create (each holds files on disk); more are refused and logged",
  },
  retain: {
    type: "string",
    placeholder: "DURATION",
    description:
      "Prune the vault at start and every hour: remove records first sealed more than DURATION ago (such as 30d; whole segments, never a source's newest), recorded in a seal",
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
  "syslog-tls": {
    type: "boolean",
    description:
      "The syslog port speaks TLS 1.3 (RFC 5425) with --tls-cert and --tls-key; with --client-ca or --allow-cert it requires a client certificate too, and the certificate joins the source key",
  },
  "silent-after": {
    type: "integer",
    placeholder: "SECS",
    min: 1,
    default: DEFAULT_SILENT_AFTER_MS / 1000,
    description:
      "Log source_silent when a vault source that shipped sends no record and no heartbeat for SECS (a killed shipper), and source_back when it returns",
  },
  socket: {
    type: "string",
    placeholder: "PATH",
    defaultText:
      "DIR/moat.sock with --vault; else $XDG_RUNTIME_DIR/moat/moat-PORT.sock, /run/moat/moat-PORT.sock as root, or TMPDIR/moat-UID/moat-PORT.sock",
    description:
      "Answer moat status on this Unix socket (mode 0600, in a folder no other user may write)",
  },
  "syslog-max-conns": {
    type: "integer",
    placeholder: "N",
    min: 1,
    default: DEFAULT_SYSLOG_MAX_CONNS,
    description:
      "Most syslog connections at once, counted apart from --max-conns",
  },
  "syslog-idle-timeout": {
    type: "integer",
    placeholder: "SECS",
    min: 1,
    default: DEFAULT_SYSLOG_IDLE_TIMEOUT_MS / 1000,
    description:
      "Close a syslog connection that sends no whole message within SECS of connecting",
  },
  "syslog-quiet-timeout": {
    type: "integer",
    placeholder: "SECS",
    min: 1,
    default: DEFAULT_SYSLOG_QUIET_TIMEOUT_MS / 1000,
    description:
      "Close a syslog connection that sent messages, then none for SECS (forwarders keep theirs open between bursts)",
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
  ...SERVE_WITNESS_OPTIONS,
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
  env: [
    ...SERVE_SECURITY_ENV,
    {
      name: "XDG_RUNTIME_DIR",
      description:
        "Where the default --socket of a server without a vault is (its moat folder)",
    },
    {
      name: "NO_COLOR",
      description: "Set: the banner on a terminal has no colour",
    },
  ],
  exits: [
    {
      code: 0,
      description:
        "stopped by SIGINT or SIGTERM (or the unit or ruleset was printed)",
    },
    ...COMMON_EXITS.filter((e) => e.code !== 0),
  ],
  notes: `Lines typed on stdin go to every chat client as "operator"; a line
/who lists the chat's members instead (to the operator alone).
SIGHUP reopens --log and reads --allow-file, --tls-cert, --tls-key,
--client-ca and --token-file again; a configuration that does not load is
refused and the old one stays. SIGUSR1 is logged and ignored.`,
};

type ServeValues = OptionValues<typeof SERVE_OPTIONS>;

/**
 * Runs `moat serve` until SIGINT or SIGTERM (which exit 0).
 *
 * @param args The arguments after "serve".
 * @param context The environment, the build target and main.ts's path.
 * @throws {MoatError} A usage error before listening, or a taken port.
 */
/**
 * Where the tree worker's entry (`cli/_tree_worker.ts`) is: beside this
 * file, or, in a `bun build --compile` binary, where every bundled module's
 * `import.meta.url` is the entry's (`file:///$bunfs/root/<name>`), at its
 * path from the project root, which `scripts/build.sh` gives as a second
 * entrypoint.
 *
 * @param here This module's URL.
 * @returns The entry's URL.
 */
export function treeWorkerUrl(here: string = import.meta.url): URL {
  const bundled = here.includes("/$bunfs/") || here.includes("~BUN/");
  return new URL(bundled ? "./cli/_tree_worker.ts" : "./_tree_worker.ts", here);
}

export async function serveCommand(
  args: string[],
  context: RunContext,
): Promise<void> {
  const parsed = parseCommand(SERVE, args, context);
  if (parsed.help) return printLine(formatHelp(SERVE));
  // The vault's per-record hashes through libcrypto where it loads
  // (loaded at the first hash, not here).
  setNativeSha256(nativeSha256Parts);
  setNativeSha256Batch(nativeSha256Batch);
  // Trees hash chunks on a worker thread where a native SHA-256 loads.
  setTreeWorker(treeWorkerUrl());
  const { values, given } = parsed;
  const gave = new Set(given.map((g) => g.name));

  const allowlist = readAllowlist(values);
  const jail = await createJail(values.root);
  const syslog = syslogOptions(values, gave);
  const nats = values.vault !== undefined && isNatsUrl(values.vault);
  checkNatsOptions(values, nats, gave);
  const witnesses = witnessTargets(values);
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
      // Descriptors for both ports' connections.
      maxConns: values["max-conns"] + (syslog?.maxConns ?? 0),
      connects: [
        ...witnesses.map((w) => w.client.server),
        ...natsServers(values.vault),
      ],
      version: VERSION,
    }));
    return;
  }

  const terminals = {
    stdin: process.stdin.isTTY === true,
    stdout: process.stdout.isTTY === true,
    stderr: process.stderr.isTTY === true,
  };
  const target = chooseAuditLog(values.log, terminals);
  const log = target.file === undefined ? undefined : new AuditFile(
    target.file,
    target.byDefault
      ? `the audit log "${target.file}" (the default when the chat is on a terminal: give --log FILE, or --log - for stderr)`
      : `--log "${escapeText(target.file)}"`,
  );
  const audit = new AuditLog(
    log ? (line) => log.write(line) : (line) => {
      process.stderr.write(line + "\n");
    },
    { limit: auditRateLimit(values["audit-rate"]) },
  );

  if (values.retain !== undefined && values.vault === undefined) {
    throw new UsageError("--retain needs --vault DIR");
  }
  const retainMs = values.retain === undefined
    ? undefined
    : parseDuration("--retain", values.retain);
  let vault: Vault | undefined;
  // Made once the vault is open; the vault tells it of each new checkpoint.
  let feeder: WitnessFeeder<SourceKey> | undefined;
  const seals = new SealTracker();
  if (values.vault !== undefined) {
    let keyCreated = false;
    try {
      const open = nats
        ? (await import("./serve_nats.ts")).natsVaultOpener(values, audit)
        : openVault;
      vault = await open(values.vault, {
        ...(retainMs !== undefined && {
          retainMs,
          onPrune: (e: PruneEvent) =>
            e.type === "pruned"
              ? audit.write("vault_pruned", {
                before: new Date(e.before).toISOString(),
                ...(e.epoch !== undefined && { epoch: e.epoch }),
                records: e.records,
                bytes: e.bytes,
                sources: e.sources.map((s) => ({
                  source: sourceLabel(s.source),
                  through: s.throughSeq,
                  records: s.records,
                  bytes: s.bytes,
                })),
                ...(e.skipped.length > 0 && {
                  skipped: e.skipped.map((s) => ({
                    source: sourceLabel(s.source),
                    reason: s.reason,
                  })),
                }),
              })
              : audit.write("vault_prune_failed", { message: e.message }),
        }),
        onEvent: (e) => audit.write("vault_repair", { ...e }),
        onTree: (e) =>
          e.type === "checkpoint_key_created"
            ? (keyCreated = true)
            : "source" in e
            ? audit.write("vault_tree", { ...e, source: sourceLabel(e.source) })
            : audit.write("vault_tree", { ...e }),
        sealIntervalMs: values["seal-interval"] * 1000,
        maxSourcesPerPeer: values["max-sources-per-peer"],
        onSeal: (e) => {
          seals.note(e);
          audit.write(
            e.type === "sealed" ? "vault_sealed" : "vault_seal_failed",
            { ...e },
          );
        },
        onCheckpoint: (e) => feeder?.submit([e.source]),
      });
    } catch (err) {
      if (err instanceof UsageError) throw err;
      throw new UsageError(
        `Cannot open --vault "${escapeText(values.vault)}": ${
          (err as Error).message
        }`,
      );
    }
    audit.write("vault_checkpoint_key", {
      verifier: vault.checkpointVerifier,
      created: keyCreated,
    });
    if (witnesses.length > 0) {
      feeder = new WitnessFeeder(vault, {
        witnesses,
        audit,
        label: sourceLabel,
      });
      // Every source's latest checkpoint at once: a vault put back from an
      // older copy while every shipper was offline is refused now, not
      // when a source next grows.
      feeder.submit(vault.sources().map((s) => s.key));
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
  // Unique across restarts, so that a name in a months-long log is one
  // connection.
  const namePrefix = `${randomTag()}-`;
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
      maxConnsPerPeer: values["max-conns-per-peer"],
      idleTimeoutMs: values["idle-timeout"] * 1000,
      handshakeTimeoutMs: values["handshake-timeout"] * 1000,
      maxFrameSize: values["max-frame"],
      maxLine: values["max-line"],
      chatRate: values["chat-rate"],
      sendBufferBytes: values["send-buffers"] * 2 ** 20,
      plain: !values["no-plain"],
      silentAfterMs: values["silent-after"] * 1000,
      namePrefix,
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
  // Set once listening: the status socket is named after the bound port.
  const opened: { status?: StatusSocket | undefined } = {};
  handleServeSignals({
    audit,
    log,
    reload: () =>
      server.reload({
        allowlist: readAllowlist(values),
        ...serverSecurity(values, context.env),
      }),
    // The vault's last seal and its audit line come before "shutdown".
    stop: async () => {
      try {
        await opened.status?.close();
        await server.close({
          // Every record is durable now: the witnesses get the final
          // checkpoints (for a few seconds at most), and the feeder, which
          // asks the vault for them, stops before the vault closes.
          beforeShutdown: async () => {
            await feeder?.finish(
              vault?.sources().map((s) => s.key) ?? [],
              WITNESS_FINISH_MS,
            );
            await vault?.close();
          },
        });
      } finally {
        log?.close();
        process.exit(0);
      }
    },
    note: printNote,
  });
  let addrs;
  try {
    addrs = await server.listen();
  } catch (err) {
    // A host without IPv6 still serves IPv4; a taken port is fatal.
    if (values.host !== undefined || err instanceof AddressInUseError) {
      throw err;
    }
    server = make([allowlist.loopbackOnly ? "127.0.0.1" : "0.0.0.0"]);
    addrs = await server.listen();
  }
  if (terminals.stderr) {
    const lines = formatBanner({
      version: VERSION,
      root: jail.root,
      addrs: addrs.map(formatAddr),
      ...(syslog && { syslog: server.syslogAddrs.map(formatAddr) }),
      allow: allowlist.describe(),
      tls: security.tls !== undefined,
      clientAuth: [
        ...(security.auth?.certs ? ["client certificate"] : []),
        ...(security.auth?.tokens ? ["token"] : []),
      ],
      plain: !values["no-plain"] && security.tls === undefined &&
        security.auth?.tokens === undefined,
      vault: vault && { dir: vault.dir, sealed: vault.sealed },
      auditFile: log && path.resolve(log.path),
      auditByDefault: target.byDefault,
    }, {
      columns: process.stderr.columns ?? 80,
      color: !context.env.NO_COLOR,
    });
    printToStderr(lines.join("\n"));
  }
  const running = server;
  opened.status = await openStatus(values, {
    port: addrs[0]?.port ?? values.port,
    env: context.env,
    audit,
    report: () => ({
      ...running.status(),
      pid: process.pid,
      runtime: `${net.runtime} ${net.runtimeVersion}`,
      seal: vault === undefined ? null : seals.status(vault.sealed),
    }),
  }).catch(async (err) => {
    await running.close();
    await feeder?.close();
    await vault?.close();
    throw err;
  });

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

/**
 * Opens the status socket of `moat status`. At a path given with --socket
 * (or where another server answers) a failure stops the server; at a
 * default path it is logged (`status_unavailable`) and the server serves on
 * without one, as before there was one.
 */
async function openStatus(
  values: ServeValues,
  options: {
    port: number;
    env: Record<string, string | undefined>;
    audit: AuditLog;
    report: () => unknown;
  },
): Promise<StatusSocket | undefined> {
  const given = values.socket;
  const path = given ??
    defaultSocketPath({
      vault: localVaultDir(values),
      port: options.port,
      env: options.env,
    });
  try {
    const socket = await StatusSocket.open(getNet(), {
      path,
      // Only the folder under the runtime or temporary folder is ours to make.
      createDir: given === undefined && localVaultDir(values) === undefined,
      report: options.report,
    });
    options.audit.write("status_listening", { path: socket.path });
    return socket;
  } catch (err) {
    if (given !== undefined || err instanceof AddressInUseError) throw err;
    options.audit.write("status_unavailable", {
      path,
      message: (err as Error).message,
    });
    return undefined;
  }
}

/** The servers of a --vault nats://…, as host and port (none for a directory). */
function natsServers(vault: string | undefined) {
  if (vault === undefined || !isNatsUrl(vault)) return [];
  return parseNatsUrl(vault).map((server) => {
    const colon = server.lastIndexOf(":");
    return {
      hostname: server.slice(0, colon).replace(/^\[(.*)\]$/, "$1"),
      port: Number(server.slice(colon + 1)),
    };
  });
}

/** The vault directory on this host: --vault DIR, or the --vault-cache of a nats:// vault. */
function localVaultDir(values: ServeValues): string | undefined {
  if (values.vault === undefined || !isNatsUrl(values.vault)) {
    return values.vault;
  }
  return values["vault-cache"];
}

/** Options that mean something only with --vault nats://…. */
const NATS_ONLY = [
  "vault-cache",
  "nats-creds",
  "nats-tls-ca",
  "nats-tls-cert",
  "nats-tls-key",
  "stream",
  "replicas",
] as const;

/** Checks the --vault nats://… options against each other. */
function checkNatsOptions(
  values: ServeValues,
  nats: boolean,
  gave: Set<string>,
): void {
  if (!nats) {
    const stray = NATS_ONLY.find((name) => gave.has(name));
    if (stray !== undefined) {
      throw new UsageError(`--${stray} needs --vault nats://…`);
    }
    return;
  }
  try {
    parseNatsUrl(values.vault!);
    checkStreamName(values.stream);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values["vault-cache"] === undefined) {
    throw new UsageError(
      "--vault nats://… needs --vault-cache DIR (this front door's local copy of the stream)",
    );
  }
  if (values.retain !== undefined) {
    throw new UsageError(
      "--retain cannot prune a JetStream vault (its stream denies deletes)",
    );
  }
  if (
    (values["nats-tls-cert"] === undefined) !==
      (values["nats-tls-key"] === undefined)
  ) {
    throw new UsageError("--nats-tls-cert and --nats-tls-key go together");
  }
}

/** Options that mean something only with --syslog-port. */
const SYSLOG_ONLY = [
  "syslog-max",
  "syslog-max-conns",
  "syslog-idle-timeout",
  "syslog-quiet-timeout",
  "syslog-tls",
] as const;

/**
 * The allowlist of --allow, --allow-file and --deny, the files read now (at
 * start and on each SIGHUP); `moat witness` takes the same options.
 *
 * @param values The three options' values.
 * @returns The compiled allowlist.
 * @throws {UsageError} For a bad rule or an unreadable file.
 */
export function readAllowlist(
  values: Pick<ServeValues, "allow" | "allow-file" | "deny">,
): Allowlist {
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
  return compileAllowlist({ allow, deny: values.deny });
}

/** Digits and lower-case letters but i, l, o and u: 32, for an even draw. */
const TAG_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";

/** Four random characters of {@linkcode TAG_ALPHABET}, e.g. "k3f9". */
function randomTag(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(4));
  return [...bytes].map((b) => TAG_ALPHABET[b & 31]).join("");
}

/** The --syslog-* options; undefined without a port. */
function syslogOptions(values: ServeValues, gave: Set<string>) {
  const port = values["syslog-port"];
  if (port === undefined) {
    const stray = SYSLOG_ONLY.find((name) => gave.has(name));
    if (stray !== undefined) {
      throw new UsageError(`--${stray} needs --syslog-port`);
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
  const tls = values["syslog-tls"];
  if (tls && values["tls-cert"] === undefined) {
    throw new UsageError(
      "--syslog-tls needs --tls-cert and --tls-key (the syslog port uses the server's certificate)",
    );
  }
  return {
    port,
    maxMessage,
    maxConns: values["syslog-max-conns"],
    idleTimeoutMs: values["syslog-idle-timeout"] * 1000,
    quietTimeoutMs: values["syslog-quiet-timeout"] * 1000,
    tls,
  };
}
