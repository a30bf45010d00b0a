/**
 * A least-privilege systemd unit for `moat serve`, generated from the same
 * flags and the same compiled allowlist the server itself uses. Pure: no file
 * or process access; `cli/serve.ts` gathers the inputs and prints the result.
 *
 * What the unit does:
 * - runs moat as the static system user `moat` (`User=moat`), with no
 *   capabilities (only `CAP_NET_BIND_SERVICE` for a port below 1024), no new
 *   privileges, a native-only `@system-service` system call filter, and the
 *   whole file system read-only (`ProtectSystem=strict`, `ProtectHome=yes`);
 * - grants write access to `--log` and `--vault` only; `--root`, the
 *   allow-files, TLS files and token file stay readable;
 * - adds the kernel's own address filter: `IPAddressDeny=any` plus one
 *   `IPAddressAllow=` line per network moat's guard allows, with the deny
 *   rules subtracted (see {@linkcode computeIpAddressAllow});
 * - starts moat with the serve flags it was given, paths made absolute, each
 *   word quoted for systemd (see {@linkcode quoteSystemdArg}).
 *
 * @module
 */

import * as path from "node:path";
import { type Cidr, formatCidr, parseIp } from "../allowlist.ts";
import { UsageError } from "../errors.ts";
import { subtractCidrs } from "../cidr.ts";
import {
  HOME_DIRS,
  isUnder,
  isUnderAny,
  OWN_FLAG,
  programPaths,
  type ServeFlag,
  type SystemdLauncher,
  unitTail,
} from "./_common.ts";
import {
  bindWord,
  checkPath,
  denoList,
  executableWord,
  pathWord,
  quoteSystemdArg,
} from "./_quote.ts";

/** The rules of a compiled allowlist (see `compileAllowlist`). */
export interface AllowlistRules {
  /** Effective allow rules (the loopback networks when no `--allow` was given). */
  readonly allow: readonly Cidr[];
  /** Deny rules; they win over allow rules. */
  readonly deny: readonly Cidr[];
  /** `true` when no allow rule was given. */
  readonly loopbackOnly: boolean;
}

/** Options for {@linkcode renderSystemdUnit}. */
export interface SystemdUnitOptions {
  /** The program that runs moat. */
  launcher: SystemdLauncher;
  /**
   * The `serve` flags as given, in order. `print-systemd-unit` is dropped;
   * the values of `root`, `log`, `vault` and `allow-file` are made absolute.
   */
  flags: readonly ServeFlag[];
  /** Absolute directory that relative paths in `flags` are resolved against. */
  cwd: string;
  /** The compiled allowlist of these flags. */
  allowlist: AllowlistRules;
  /** The listening port (0 for any). */
  port: number;
  /** Other listening ports, e.g. `--syslog-port`. */
  extraPorts?: readonly number[];
  /** The connection limit (`--max-conns`); sets `LimitNOFILE=`. */
  maxConns: number;
  /**
   * Where the server itself connects (its `--witness` addresses, the
   * servers of a `--vault nats://…`): IP addresses, let through the
   * kernel's filter and Deno's `--allow-net`.
   */
  connects?: readonly { hostname: string; port: number }[];
  /** moat's version, for the header comment. */
  version?: string;
}

/** Result of {@linkcode computeIpAddressAllow}. */
export interface IpAddressAllow {
  /** One network per `IPAddressAllow=` line, e.g. `"10.0.0.0/8"`. */
  rules: string[];
  /**
   * `true` when `rules` is exactly the set the guard allows (deny rules
   * subtracted); `false` when subtracting would have needed more than
   * `maxRules` networks, in which case `rules` are the allow rules as given
   * and only moat's guard enforces the deny rules.
   */
  exact: boolean;
}

/** Options for {@linkcode computeIpAddressAllow}. */
export interface IpAddressAllowOptions {
  /**
   * Most networks to emit when subtracting deny rules.
   *
   * @default {1024}
   */
  maxRules?: number;
}

/** Flags whose value is a path to a file or folder. */
const PATH_FLAGS: ReadonlySet<string> = new Set([
  "root",
  "log",
  "vault",
  "allow-file",
  "tls-cert",
  "tls-key",
  "client-ca",
  "token-file",
  "vault-cache",
  "nats-creds",
  "nats-tls-ca",
  "nats-tls-cert",
  "nats-tls-key",
]);
/** The system user the unit runs as. */
const USER = "moat";

/**
 * Computes the networks for systemd's `IPAddressAllow=` so that, together
 * with `IPAddressDeny=any`, the kernel lets through exactly the peers moat's
 * guard allows. systemd has no "allow except": when an address matches both
 * lists, `IPAddressAllow=` wins. So each deny rule is subtracted from the
 * allow rules instead (`10.0.0.0/8` minus `10.0.0.5/32` is 24 networks), and
 * the result is the fewest networks that cover it (see
 * {@linkcode subtractCidrs} in `cidr.ts`). If that would exceed `maxRules`,
 * the allow rules are returned without the deny rules subtracted, with
 * `exact: false`: the kernel then admits the denied peers too and moat's guard
 * refuses them.
 *
 * @example Subtract a deny rule
 * ```ts
 * import assert from "node:assert/strict";
 * import { compileAllowlist } from "../allowlist.ts";
 * import { computeIpAddressAllow } from "./mod.ts";
 *
 * const list = compileAllowlist({ allow: ["10.0.0.0/30"], deny: ["10.0.0.1"] });
 * assert.deepEqual(computeIpAddressAllow(list), {
 *   rules: ["10.0.0.0/32", "10.0.0.2/31"],
 *   exact: true,
 * });
 * assert.deepEqual(computeIpAddressAllow(compileAllowlist({})).rules, [
 *   "127.0.0.0/8",
 *   "::1/128",
 * ]);
 * ```
 *
 * @param allowlist The compiled allowlist.
 * @param options Limits.
 * @returns The networks, IPv4 first, each in ascending order.
 */
export function computeIpAddressAllow(
  allowlist: Pick<AllowlistRules, "allow" | "deny">,
  options: IpAddressAllowOptions = {},
): IpAddressAllow {
  const { cidrs, exact } = subtractCidrs(allowlist.allow, allowlist.deny, {
    maxCidrs: options.maxRules ?? 1024,
  });
  return { rules: cidrs.map(formatCidr), exact };
}

/** An address as a `host:port` entry takes it: IPv6 in brackets. */
function _bracketed(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

/** The `host:port` entries Deno's `--allow-net` needs to listen. */
function _denoNet(
  flags: readonly ServeFlag[],
  loopbackOnly: boolean,
  port: number,
): string[] {
  let host: string | undefined;
  for (const f of flags) if (f.name === "host") host = f.value;
  // Mirrors `moat serve`: the given host, else loopback or all addresses,
  // with an IPv4-only fallback where IPv6 is unavailable.
  const hosts = host !== undefined
    ? [host]
    : loopbackOnly
    ? ["127.0.0.1", "::1"]
    : ["0.0.0.0", "::"];
  return hosts.map((h) => {
    const name = h.includes(":") && !h.startsWith("[") ? `[${h}]` : h;
    return port === 0 ? name : `${name}:${port}`;
  });
}

/**
 * Renders a least-privilege systemd service unit that runs `moat serve` with
 * the given flags.
 *
 * Choices, and why:
 * - `User=moat` (a static system user the operator creates) rather than
 *   `DynamicUser=yes`: the audit log and the vault are long-lived files at
 *   paths the operator picks, and they must keep one owner across restarts
 *   and be readable by the operator's tools; the protections `DynamicUser=`
 *   implies (`PrivateTmp=`, `RemoveIPC=`, `RestrictSUIDSGID=`, ...) are set
 *   explicitly instead.
 * - A log under `/var/log/<dir>/` uses `LogsDirectory=<dir>` and a vault under
 *   `/var/lib/<dir>` uses `StateDirectory=<dir>`, which systemd creates and
 *   hands to the user; other write paths go to `ReadWritePaths=` and must
 *   exist, owned by `moat`.
 * - Paths under `/home`, `/root` or `/run/user` switch to `ProtectHome=tmpfs`
 *   and are bound in (`BindReadOnlyPaths=`, `BindPaths=`); paths under
 *   `/tmp`, `/var/tmp` or `/dev` turn off `PrivateTmp=` or `PrivateDevices=`.
 * - No `MemoryDenyWriteExecute=`: the JavaScript JIT needs it off.
 *
 * @example Print the unit for a LAN server
 * ```ts
 * import assert from "node:assert/strict";
 * import { compileAllowlist } from "../allowlist.ts";
 * import { renderSystemdUnit } from "./mod.ts";
 *
 * const unit = renderSystemdUnit({
 *   launcher: { executable: "/usr/local/bin/moat" },
 *   flags: [
 *     { name: "allow", value: "192.168.1.0/24" },
 *     { name: "root", value: "share" },
 *     { name: "print-systemd-unit" },
 *   ],
 *   cwd: "/srv",
 *   allowlist: compileAllowlist({ allow: ["192.168.1.0/24"] }),
 *   port: 4320,
 *   maxConns: 512,
 * });
 * assert.match(
 *   unit,
 *   /^ExecStart=\/usr\/local\/bin\/moat serve --allow 192\.168\.1\.0\/24 --root \/srv\/share$/m,
 * );
 * assert.match(unit, /^IPAddressDeny=any\nIPAddressAllow=192\.168\.1\.0\/24$/m);
 * assert.match(unit, /^User=moat$/m);
 * ```
 *
 * @param options The launcher, the flags and the compiled allowlist.
 * @returns The unit file text, ending with a newline.
 * @throws {UsageError} If the program path is not absolute or holds a quote,
 * backslash, `$` or control character; if a path holds a control character;
 * or, for Deno, if a path holds a comma.
 */
export function renderSystemdUnit(options: SystemdUnitOptions): string {
  const { launcher, cwd, allowlist, port, maxConns } = options;
  const exe = executableWord(launcher.executable);

  // Serve flags: ours dropped, paths absolute, --root always explicit since
  // the service's working directory is "/".
  const flags: ServeFlag[] = [];
  let root: string | undefined;
  const logs: string[] = [];
  const vaults: string[] = [];
  const allowFiles: string[] = [];
  const secrets: string[] = [];
  for (const f of options.flags) {
    if (f.name === OWN_FLAG) continue;
    let value = f.value;
    // A JetStream vault is an address, not a path (its --vault-cache is).
    const address = f.name === "vault" && value?.startsWith("nats://");
    if (value !== undefined && PATH_FLAGS.has(f.name) && !address) {
      value = path.resolve(cwd, value);
      checkPath(value, `--${f.name}`);
      if (f.name === "root") root = value;
      else if (f.name === "log") logs.push(value);
      else if (f.name === "vault" || f.name === "vault-cache") {
        vaults.push(value);
      } else if (f.name === "allow-file") allowFiles.push(value);
      else secrets.push(value);
    }
    flags.push(
      value === undefined ? { name: f.name } : { name: f.name, value },
    );
  }
  if (root === undefined) {
    root = path.resolve(cwd);
    checkPath(root, "--root");
    flags.push({ name: "root", value: root });
  }
  const serveWords: string[] = ["serve"];
  for (const f of flags) {
    serveWords.push(`--${f.name}`);
    if (f.value !== undefined) serveWords.push(f.value);
  }

  // Write access: systemd-managed folders where possible.
  const logsDirs: string[] = [];
  const stateDirs: string[] = [];
  const readWrite: string[] = [];
  for (const log of logs) {
    const dir = path.posix.dirname(log);
    if (isUnder(dir, "/var/log") && dir !== "/var/log") {
      logsDirs.push(path.posix.relative("/var/log", dir));
    } else readWrite.push(log);
  }
  for (const vault of vaults) {
    if (isUnder(vault, "/var/lib") && vault !== "/var/lib") {
      stateDirs.push(path.posix.relative("/var/lib", vault));
    } else readWrite.push(vault);
  }
  const readOnly = [root, ...allowFiles, ...secrets];
  const tokenFile = options.flags.some((f) => f.name === "token-file");
  const ports = [port, ...(options.extraPorts ?? [])];
  const connects = (options.connects ?? []).map((c) => {
    if (parseIp(c.hostname) === null || c.hostname.includes("%")) {
      throw new UsageError(
        `Cannot write a systemd unit: ${
          JSON.stringify(c.hostname)
        } is not an IP address (give --witness as one)`,
      );
    }
    return c;
  });
  const program = programPaths(launcher, cwd);

  const all = [...readOnly, ...readWrite, ...program];
  const home = all.some((p) => isUnderAny(p, HOME_DIRS));

  // The command.
  const command: string[] = [];
  if (launcher.script !== undefined) {
    const script = program[1]!;
    if (launcher.runtime === "deno") {
      command.push(
        "run",
        "--no-prompt",
        denoList("allow-net", [
          ...ports.flatMap((p) => _denoNet(flags, allowlist.loopbackOnly, p)),
          ...connects.map((c) => `${_bracketed(c.hostname)}:${c.port}`),
        ]),
        denoList("allow-read", [...readOnly, ...vaults]),
      );
      // Without --token-file, moat reads the token from $MOAT_TOKEN.
      if (!tokenFile) command.push("--allow-env=MOAT_TOKEN");
      const writable = [...logs, ...vaults];
      if (writable.length > 0) command.push(denoList("allow-write", writable));
    }
    command.push(script);
  }
  command.push(...serveWords);
  const execStart = [exe, ...command.map(quoteSystemdArg)].join(" ");

  const deno = launcher.runtime === "deno" && launcher.script !== undefined;
  const kernel = computeIpAddressAllow(allowlist);
  const denied = allowlist.deny.map(formatCidr);
  const lowPort = ports.some((p) => p > 0 && p < 1024);
  const l: string[] = [];
  const push = (...lines: string[]) => l.push(...lines);

  push(
    `# Generated by \`moat serve --print-systemd-unit\`${
      options.version ? ` (moat ${options.version})` : ""
    }.`,
    "# Install: useradd --system --no-create-home --shell /usr/sbin/nologin moat",
    "# then save as /etc/systemd/system/moat.service and run",
    "# systemctl daemon-reload && systemctl enable --now moat",
    "",
    "[Unit]",
    `Description=moat guarded socket server (port ${ports.join(", ")})`,
    "After=network.target",
    "",
    "[Service]",
    "Type=exec",
    `ExecStart=${execStart}`,
    "ExecReload=/bin/kill -HUP $MAINPID",
    "Restart=on-failure",
    "RestartSec=2s",
    "TimeoutStopSec=15s",
    "",
    "# A dedicated, unprivileged user (see docs/DEPLOY.md for why not DynamicUser=).",
    `User=${USER}`,
    `Group=${USER}`,
    "UMask=0027",
    `LimitNOFILE=${Math.max(1024, 2 * maxConns + 64)}`,
    "",
    "# The kernel drops packets from every address moat's guard would refuse,",
    "# before moat sees them. IPAddressAllow= wins over IPAddressDeny=.",
    "IPAddressDeny=any",
  );
  if (kernel.rules.length === 0) {
    push("# (none: every allowed network is also denied)");
  }
  for (const rule of kernel.rules) push(`IPAddressAllow=${rule}`);
  if (connects.length > 0) {
    push("# The witnesses this server sends its checkpoints to.");
    for (const ip of new Set(connects.map((c) => c.hostname))) {
      push(`IPAddressAllow=${ip}`);
    }
  }
  if (allowlist.loopbackOnly) {
    push("# No --allow given: loopback only, as moat itself enforces.");
  }
  if (denied.length > 0) {
    push(
      kernel.exact
        ? `# Deny rules (${
          denied.join(", ")
        }) are subtracted above; moat's guard enforces them too.`
        : `# Deny rules (${
          denied.join(", ")
        }) need too many networks to subtract here: only moat's guard enforces them.`,
    );
  }
  if (allowFiles.length > 0) {
    push(
      "# These lines were computed from the allow-file(s) as they are now:",
      "# regenerate the unit whenever they change.",
    );
  }
  push(
    // Deno's signal handling needs a Unix socket pair.
    `RestrictAddressFamilies=AF_INET AF_INET6${deno ? " AF_UNIX" : ""}`,
    "",
    "# Files: everything read-only; the root, allow-files, TLS and token files readable;",
    "# only the log and the vault writable.",
    "ProtectSystem=strict",
    `ProtectHome=${home ? "tmpfs" : "yes"}`,
  );
  const roWords = readOnly.map(pathWord).join(" ");
  if (home) {
    const ro = [...readOnly, ...program].filter((p) =>
      isUnderAny(p, HOME_DIRS)
    );
    const rw = readWrite.filter((p) => isUnderAny(p, HOME_DIRS));
    if (ro.length > 0) push(`BindReadOnlyPaths=${ro.map(bindWord).join(" ")}`);
    if (rw.length > 0) push(`BindPaths=${rw.map(bindWord).join(" ")}`);
  }
  push(`ReadOnlyPaths=${roWords}`);
  if (readWrite.length > 0) {
    push(
      "# Each must exist and be writable by the moat user.",
      `ReadWritePaths=${readWrite.map(pathWord).join(" ")}`,
    );
  }
  if (logsDirs.length > 0) {
    push(
      `LogsDirectory=${logsDirs.map(pathWord).join(" ")}`,
      "LogsDirectoryMode=0750",
    );
  }
  if (stateDirs.length > 0) {
    push(
      `StateDirectory=${stateDirs.map(pathWord).join(" ")}`,
      "StateDirectoryMode=0750",
    );
  }
  if (deno) push("CacheDirectory=moat", "Environment=DENO_DIR=%C/moat/deno");
  push(...unitTail(all, lowPort ? "CAP_NET_BIND_SERVICE" : ""));
  return l.join("\n") + "\n";
}
