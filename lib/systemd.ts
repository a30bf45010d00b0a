/**
 * A least-privilege systemd unit for `moat serve`, generated from the same
 * flags and the same compiled allowlist the server itself uses. Pure: no file
 * or process access; `main.ts` gathers the inputs and prints the result.
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
import { type Cidr, formatCidr } from "./allowlist.ts";
import { subtractCidrs } from "./cidr.ts";
import { UsageError } from "./errors.ts";
import { parseIp } from "./allowlist.ts";

/** One serve flag as given on the command line, in order. */
export interface ServeFlag {
  /** Long name without dashes, e.g. `"root"`. */
  name: string;
  /** The flag's value; absent for a boolean flag. */
  value?: string | undefined;
}

/** The rules of a compiled allowlist (see `compileAllowlist`). */
export interface AllowlistRules {
  /** Effective allow rules (the loopback networks when no `--allow` was given). */
  readonly allow: readonly Cidr[];
  /** Deny rules; they win over allow rules. */
  readonly deny: readonly Cidr[];
  /** `true` when no allow rule was given. */
  readonly loopbackOnly: boolean;
}

/** How the unit starts moat. */
export interface SystemdLauncher {
  /**
   * Absolute path of the program: the compiled moat binary, or the `deno` or
   * `bun` executable when moat runs from source.
   */
  executable: string;
  /** Absolute path of `main.ts` when moat runs from source under a runtime. */
  script?: string;
  /**
   * The runtime running `script`. With `"deno"` the unit runs
   * `deno run --no-prompt` with permissions narrowed to the listening
   * addresses, read access to the root and allow-files, and write access to
   * the log and vault.
   */
  runtime?: "deno" | "bun";
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
]);
/** Dropped from ExecStart. */
const OWN_FLAG = "print-systemd-unit";
/** The system user the unit runs as. */
const USER = "moat";
/** Words that systemd leaves alone without quotes (`%` and `$` are special). */
const SAFE_WORD = /^[A-Za-z0-9_@+=:,./-]+$/;
/** Folders that `ProtectHome=` hides. */
const HOME_DIRS = ["/home", "/root", "/run/user"];
/** Folders that `PrivateTmp=` replaces. */
const TMP_DIRS = ["/tmp", "/var/tmp"];
/** The folder that `PrivateDevices=` replaces. */
const DEV_DIR = "/dev";

/**
 * Quotes one command-line word for a systemd `ExecStart=` line so that
 * systemd passes it to moat unchanged: words of plain characters stay bare;
 * anything else is put in double quotes with `\` and `"` escaped and control
 * characters written as C escapes. `%` (a unit specifier) becomes `%%` and `$`
 * (environment substitution) becomes `$$`, inside quotes too, because systemd
 * expands both after unquoting. A quoted `";"` is a plain argument, not a
 * command separator.
 *
 * @example Quote arguments
 * ```ts
 * import assert from "node:assert/strict";
 * import { quoteSystemdArg } from "./systemd.ts";
 *
 * assert.equal(quoteSystemdArg("--root"), "--root");
 * assert.equal(quoteSystemdArg("/srv/my files"), '"/srv/my files"');
 * assert.equal(quoteSystemdArg('50% off, "$5"'), '"50%% off, \\"$$5\\""');
 * assert.equal(quoteSystemdArg(""), '""');
 * ```
 *
 * @param word The argument.
 * @returns The word as it must appear on the `ExecStart=` line.
 */
export function quoteSystemdArg(word: string): string {
  return _quote(word, true);
}

/**
 * Quotes a word for systemd; `$` is doubled only where systemd substitutes
 * environment variables (command lines, not path settings).
 */
function _quote(word: string, dollar: boolean): string {
  if (SAFE_WORD.test(word)) return word;
  let out = '"';
  for (const ch of word) {
    const code = ch.codePointAt(0)!;
    if (ch === '"' || ch === "\\") out += "\\" + ch;
    else if (ch === "%") out += "%%";
    else if (ch === "$" && dollar) out += "$$";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\r") out += "\\r";
    else if (code < 0x20 || code === 0x7f) {
      out += "\\x" + code.toString(16).padStart(2, "0");
    } else out += ch;
  }
  return out + '"';
}

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
 * import { compileAllowlist } from "./allowlist.ts";
 * import { computeIpAddressAllow } from "./systemd.ts";
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

/** `true` if `p` is `dir` or inside it. */
function _under(p: string, dir: string): boolean {
  return p === dir || p.startsWith(dir + "/");
}

function _underAny(p: string, dirs: readonly string[]): boolean {
  return dirs.some((d) => _under(p, d));
}

/** Rejects a path systemd cannot name in a unit or that moat cannot use. */
function _checkPath(p: string, what: string): void {
  // deno-lint-ignore no-control-regex
  if (/[\x00-\x1f\x7f]/.test(p)) {
    throw new UsageError(
      `Cannot write a systemd unit: ${what} ${
        JSON.stringify(p)
      } contains a control character`,
    );
  }
}

/** A path for a path-list setting: quoted when needed, `%` escaped. */
function _pathWord(p: string): string {
  return _quote(p, false);
}

/** A path for `BindPaths=`/`BindReadOnlyPaths=`, where `:` separates fields. */
function _bindWord(p: string): string {
  if (p.includes(":")) {
    throw new UsageError(
      `Cannot write a systemd unit: ${
        JSON.stringify(p)
      } contains ":", which a bind mount under ProtectHome= cannot name; move it out of /home, /root and /run/user`,
    );
  }
  return _pathWord(p);
}

/**
 * The executable as the first `ExecStart=` word: absolute, and free of the
 * characters systemd refuses there (quotes, backslashes) or would expand.
 */
function _executableWord(p: string): string {
  if (!path.isAbsolute(p) || !p.startsWith("/")) {
    throw new UsageError(
      `Cannot write a systemd unit: the program path ${
        JSON.stringify(p)
      } is not absolute`,
    );
  }
  // deno-lint-ignore no-control-regex
  if (/["'\\$\x00-\x1f\x7f]/.test(p)) {
    throw new UsageError(
      `Cannot write a systemd unit: the program path ${
        JSON.stringify(p)
      } contains a quote, backslash, "$" or control character`,
    );
  }
  return quoteSystemdArg(p);
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

/** A Deno permission list: comma-separated, so no path may hold a comma. */
function _denoList(flag: string, items: readonly string[]): string {
  for (const item of items) {
    if (item.includes(",")) {
      throw new UsageError(
        `Cannot write a systemd unit for Deno: ${
          JSON.stringify(item)
        } contains a comma, which --${flag} cannot express; use the moat binary`,
      );
    }
  }
  return `--${flag}=${[...new Set(items)].join(",")}`;
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
 * import { compileAllowlist } from "./allowlist.ts";
 * import { renderSystemdUnit } from "./systemd.ts";
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
  const exe = _executableWord(launcher.executable);

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
    if (value !== undefined && PATH_FLAGS.has(f.name)) {
      value = path.resolve(cwd, value);
      _checkPath(value, `--${f.name}`);
      if (f.name === "root") root = value;
      else if (f.name === "log") logs.push(value);
      else if (f.name === "vault") vaults.push(value);
      else if (f.name === "allow-file") allowFiles.push(value);
      else secrets.push(value);
    }
    flags.push(
      value === undefined ? { name: f.name } : { name: f.name, value },
    );
  }
  if (root === undefined) {
    root = path.resolve(cwd);
    _checkPath(root, "--root");
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
    if (_under(dir, "/var/log") && dir !== "/var/log") {
      logsDirs.push(path.posix.relative("/var/log", dir));
    } else readWrite.push(log);
  }
  for (const vault of vaults) {
    if (_under(vault, "/var/lib") && vault !== "/var/lib") {
      stateDirs.push(path.posix.relative("/var/lib", vault));
    } else readWrite.push(vault);
  }
  const readOnly = [root, ...allowFiles, ...secrets];
  const tokenFile = options.flags.some((f) => f.name === "token-file");
  const ports = [port, ...(options.extraPorts ?? [])];
  const program = [launcher.executable];
  if (launcher.script !== undefined) {
    program.push(path.resolve(cwd, launcher.script));
  }
  for (const p of program) _checkPath(p, "the program path");

  const all = [...readOnly, ...readWrite, ...program];
  const home = all.some((p) => _underAny(p, HOME_DIRS));
  const privateTmp = !all.some((p) => _underAny(p, TMP_DIRS));
  const privateDevices = !all.some((p) => _under(p, DEV_DIR));

  // The command.
  const command: string[] = [];
  if (launcher.script !== undefined) {
    const script = program[1]!;
    if (launcher.runtime === "deno") {
      command.push(
        "run",
        "--no-prompt",
        _denoList(
          "allow-net",
          ports.flatMap((p) => _denoNet(flags, allowlist.loopbackOnly, p)),
        ),
        _denoList("allow-read", [...readOnly, ...vaults]),
      );
      // Without --token-file, moat reads the token from $MOAT_TOKEN.
      if (!tokenFile) command.push("--allow-env=MOAT_TOKEN");
      const writable = [...logs, ...vaults];
      if (writable.length > 0) command.push(_denoList("allow-write", writable));
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
  const roWords = readOnly.map(_pathWord).join(" ");
  if (home) {
    const ro = [...readOnly, ...program].filter((p) => _underAny(p, HOME_DIRS));
    const rw = readWrite.filter((p) => _underAny(p, HOME_DIRS));
    if (ro.length > 0) push(`BindReadOnlyPaths=${ro.map(_bindWord).join(" ")}`);
    if (rw.length > 0) push(`BindPaths=${rw.map(_bindWord).join(" ")}`);
  }
  push(`ReadOnlyPaths=${roWords}`);
  if (readWrite.length > 0) {
    push(
      "# Each must exist and be writable by the moat user.",
      `ReadWritePaths=${readWrite.map(_pathWord).join(" ")}`,
    );
  }
  if (logsDirs.length > 0) {
    push(
      `LogsDirectory=${logsDirs.map(_pathWord).join(" ")}`,
      "LogsDirectoryMode=0750",
    );
  }
  if (stateDirs.length > 0) {
    push(
      `StateDirectory=${stateDirs.map(_pathWord).join(" ")}`,
      "StateDirectoryMode=0750",
    );
  }
  if (deno) push("CacheDirectory=moat", "Environment=DENO_DIR=%C/moat/deno");
  if (!privateTmp) {
    push("# A path above is in /tmp or /var/tmp: keep the host's.");
  }
  push(`PrivateTmp=${privateTmp ? "yes" : "no"}`);
  if (!privateDevices) push("# A path above is in /dev: keep the host's.");
  push(
    `PrivateDevices=${privateDevices ? "yes" : "no"}`,
    "PrivateMounts=yes",
    "",
    "# Privileges and the kernel.",
    "NoNewPrivileges=yes",
    `CapabilityBoundingSet=${lowPort ? "CAP_NET_BIND_SERVICE" : ""}`,
    `AmbientCapabilities=${lowPort ? "CAP_NET_BIND_SERVICE" : ""}`,
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "RemoveIPC=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources",
    "SystemCallErrorNumber=EPERM",
    "# MemoryDenyWriteExecute= stays off: the JavaScript JIT needs W+X pages.",
    "",
    "[Install]",
    "WantedBy=multi-user.target",
  );
  return l.join("\n") + "\n";
}

/** The system user of the shipper's unit. */
const SHIP_USER = "moat-ship";
/** The shipper's state folder when no --state or --state-dir is given. */
const SHIP_STATE_DIR = `/var/lib/${SHIP_USER}`;
/** Ship flags whose value is a path to a file. */
const SHIP_PATH_FLAGS: ReadonlySet<string> = new Set([
  "config",
  "ca",
  "cert",
  "key",
  "token-file",
]);
/** Ship flags the unit writes itself (or drops). */
const SHIP_OWN_FLAGS: ReadonlySet<string> = new Set([
  OWN_FLAG,
  "server",
  "state",
  "state-dir",
]);

/** One input of the shipper's unit. */
export interface ShipUnitInput {
  /** Absolute path of a followed file. */
  path: string;
  /** Its source name, when given as `FILE=NAME`. */
  name?: string | undefined;
}

/** Options for {@linkcode renderShipUnit}. */
export interface ShipUnitOptions {
  /** The program that runs moat. */
  launcher: SystemdLauncher;
  /**
   * The `ship` flags as given, in order. `print-systemd-unit`, `server`,
   * `state` and `state-dir` are written by the unit itself; the values of
   * `config`, `ca`, `cert`, `key` and `token-file` are made absolute.
   */
  flags: readonly ServeFlag[];
  /** The files given on the command line (not those of `--config`). */
  inputs: readonly ShipUnitInput[];
  /** Every followed file, from the command line and `--config`. */
  followed: readonly string[];
  /** Absolute directory that relative paths in `flags` are resolved against. */
  cwd: string;
  /** The server, as the unit's `--server`. */
  server: { hostname: string; port: number };
  /**
   * The server's addresses: itself for an IP address, else what its name
   * resolved to when the unit was made. The kernel lets only these through.
   */
  serverAddresses: readonly string[];
  /** Name servers to let through as well when the server is a name. */
  nameServers?: readonly string[];
  /** `--state FILE` or `--state-dir DIR` as given (absolute); else a folder under /var/lib. */
  state?: { file: string } | { dir: string };
  /** Groups that can read followed files the user could not read otherwise. */
  readGroups?: readonly string[];
  /** Followed files only their owner can read (warned about in a comment). */
  unreadable?: readonly string[];
  /** moat's version, for the header comment. */
  version?: string;
}

/** An IP address as systemd's `IPAddressAllow=` takes it. */
function _address(text: string): string {
  const bare = text.startsWith("[") && text.endsWith("]")
    ? text.slice(1, -1)
    : text;
  if (parseIp(bare) === null || bare.includes("%")) {
    throw new UsageError(
      `Cannot write a systemd unit: ${
        JSON.stringify(text)
      } is not an IP address`,
    );
  }
  return bare;
}

/** `host:port` for `--server`, IPv6 in brackets. */
function _hostPort(server: { hostname: string; port: number }): string {
  const host = server.hostname.includes(":") && !server.hostname.startsWith("[")
    ? `[${server.hostname}]`
    : server.hostname;
  return `${host}:${server.port}`;
}

/**
 * The folder a state path needs writable: a `StateDirectory=` under
 * /var/lib, else a path that must exist.
 */
function _stateAccess(dir: string): { stateDirectory?: string; path: string } {
  if (dir === "/var/lib" || dir === "/" || !dir.startsWith("/")) {
    throw new UsageError(
      `Cannot write a systemd unit: the state folder ${
        JSON.stringify(dir)
      } must be a folder of its own (e.g. ${SHIP_STATE_DIR})`,
    );
  }
  if (_under(dir, "/var/lib")) {
    return { stateDirectory: path.posix.relative("/var/lib", dir), path: dir };
  }
  return { path: dir };
}

/**
 * Renders a least-privilege systemd service unit that runs `moat ship` with
 * the given flags and inputs.
 *
 * What the unit does:
 * - runs as the static system user `moat-ship`, with no capabilities, no
 *   new privileges and the serve unit's system call filter;
 * - the whole file system read-only (`ProtectSystem=strict`), the followed
 *   files' folders listed in `ReadOnlyPaths=`, home folders hidden (or only
 *   the needed paths bound in), and `SupplementaryGroups=` for the groups
 *   that can read the followed files;
 * - the state writable: `StateDirectory=` for a state folder under
 *   /var/lib (the default, `--state-dir /var/lib/moat-ship`), else
 *   `ReadWritePaths=`;
 * - `IPAddressDeny=any` and `IPAddressAllow=` only the server's addresses
 *   (plus the name servers, when the server is given by name);
 * - `Restart=always`, except after a usage error (exit 2).
 *
 * @example A unit for two log files
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderShipUnit } from "./systemd.ts";
 *
 * const unit = renderShipUnit({
 *   launcher: { executable: "/usr/local/bin/moat" },
 *   flags: [],
 *   inputs: [{ path: "/var/log/auth.log" }, { path: "/var/log/syslog", name: "system" }],
 *   followed: ["/var/log/auth.log", "/var/log/syslog"],
 *   cwd: "/",
 *   server: { hostname: "10.0.0.1", port: 4320 },
 *   serverAddresses: ["10.0.0.1"],
 * });
 * assert.match(
 *   unit,
 *   /^ExecStart=\/usr\/local\/bin\/moat ship \/var\/log\/auth\.log \/var\/log\/syslog=system --server 10\.0\.0\.1:4320 --state-dir \/var\/lib\/moat-ship$/m,
 * );
 * assert.match(unit, /^IPAddressDeny=any\nIPAddressAllow=10\.0\.0\.1$/m);
 * assert.match(unit, /^StateDirectory=moat-ship$/m);
 * ```
 *
 * @param options The launcher, flags, inputs, server and state.
 * @returns The unit file text, ending with a newline.
 * @throws {UsageError} For standard input, no server address, a program
 * path that is not absolute or holds a quote, backslash, `$` or control
 * character, a path with a control character, trust on first use (`--tls`
 * without `--ca` or `--pin`), or a state folder that is not one of its own.
 */
export function renderShipUnit(options: ShipUnitOptions): string {
  const { launcher, cwd } = options;
  const exe = _executableWord(launcher.executable);
  if (options.inputs.some((i) => i.path === "-")) {
    throw new UsageError(
      'Cannot write a systemd unit that reads standard input ("-"): a service has none',
    );
  }
  const has = (name: string) => options.flags.some((f) => f.name === name);
  if (has("tls") && !has("ca") && !has("pin")) {
    throw new UsageError(
      "Cannot write a systemd unit that trusts the server on first use: add --pin FP or --ca FILE",
    );
  }
  const addresses = [...new Set(options.serverAddresses.map(_address))];
  if (addresses.length === 0) {
    throw new UsageError(
      `Cannot write a systemd unit: ${
        JSON.stringify(options.server.hostname)
      } has no address`,
    );
  }
  const byName = parseIp(options.server.hostname.replace(/^\[|\]$/g, "")) ===
    null;
  const nameServers = byName
    ? [...new Set((options.nameServers ?? []).map(_address))]
    : [];

  // Words after "ship": the inputs, the flags as given (paths absolute),
  // then the server and the state, always explicit.
  const words: string[] = ["ship"];
  for (const input of options.inputs) {
    _checkPath(input.path, "the input");
    words.push(
      input.name === undefined ? input.path : `${input.path}=${input.name}`,
    );
  }
  const readOnly: string[] = [];
  for (const f of options.flags) {
    if (SHIP_OWN_FLAGS.has(f.name)) continue;
    let value = f.value;
    if (value !== undefined && SHIP_PATH_FLAGS.has(f.name)) {
      value = path.resolve(cwd, value);
      _checkPath(value, `--${f.name}`);
      readOnly.push(value);
    }
    words.push(`--${f.name}`);
    if (value !== undefined) words.push(value);
  }
  words.push("--server", _hostPort(options.server));
  const state = options.state ?? { dir: SHIP_STATE_DIR };
  let stateDir: string;
  if ("file" in state) {
    const file = path.resolve(cwd, state.file);
    _checkPath(file, "--state");
    words.push("--state", file);
    stateDir = path.posix.dirname(file);
  } else {
    stateDir = path.resolve(cwd, state.dir);
    _checkPath(stateDir, "--state-dir");
    words.push("--state-dir", stateDir);
  }
  const access = _stateAccess(stateDir);
  const readWrite = access.stateDirectory === undefined ? [access.path] : [];

  const folders: string[] = [];
  for (const file of options.followed) {
    _checkPath(file, "the input");
    const dir = path.posix.dirname(file);
    if (!folders.includes(dir)) folders.push(dir);
  }
  const program = [launcher.executable];
  if (launcher.script !== undefined) {
    program.push(path.resolve(cwd, launcher.script));
  }
  for (const p of program) _checkPath(p, "the program path");
  const all = [...folders, ...readOnly, ...readWrite, ...program];
  const home = all.some((p) => _underAny(p, HOME_DIRS));
  const privateTmp = !all.some((p) => _underAny(p, TMP_DIRS));
  const privateDevices = !all.some((p) => _under(p, DEV_DIR));
  const deno = launcher.runtime === "deno" && launcher.script !== undefined;

  const command: string[] = [];
  if (launcher.script !== undefined) {
    if (deno) {
      const env = has("token-file") ? [] : ["MOAT_TOKEN"];
      command.push(
        "run",
        "--no-prompt",
        _denoList("allow-net", [_hostPort(options.server)]),
        _denoList("allow-read", [...folders, ...readOnly, stateDir]),
        _denoList("allow-write", [stateDir]),
      );
      if (env.length > 0) command.push(_denoList("allow-env", env));
    }
    command.push(program[1]!);
  }
  command.push(...words);
  const execStart = [exe, ...command.map(quoteSystemdArg)].join(" ");

  const server = _hostPort(options.server);
  const l: string[] = [];
  const push = (...lines: string[]) => l.push(...lines);
  push(
    `# Generated by \`moat ship --print-systemd-unit\`${
      options.version ? ` (moat ${options.version})` : ""
    }.`,
    `# Install: useradd --system --no-create-home --shell /usr/sbin/nologin ${SHIP_USER}`,
    `# then save as /etc/systemd/system/${SHIP_USER}.service and run`,
    `# systemctl daemon-reload && systemctl enable --now ${SHIP_USER}`,
    `# The state is in ${stateDir}: a shipper that ran before with another state`,
    "# must keep it (copy it there), or the server refuses to skip its records.",
    "",
    "[Unit]",
    `Description=moat log shipper to ${server}`,
    "Wants=network-online.target",
    "After=network-online.target",
    "",
    "[Service]",
    "Type=exec",
    `ExecStart=${execStart}`,
    "# Keep shipping through any failure but a bad command line.",
    "Restart=always",
    "RestartSec=5s",
    "RestartPreventExitStatus=2",
    "TimeoutStopSec=15s",
    "",
    "# A dedicated, unprivileged user.",
    `User=${SHIP_USER}`,
    `Group=${SHIP_USER}`,
  );
  if (options.readGroups !== undefined && options.readGroups.length > 0) {
    for (const g of options.readGroups) {
      if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(g)) {
        throw new UsageError(
          `Cannot write a systemd unit: the group name ${
            JSON.stringify(g)
          } is not one systemd accepts`,
        );
      }
    }
    push(
      "# The followed files are readable by these groups, not by everyone.",
      `SupplementaryGroups=${options.readGroups.join(" ")}`,
    );
  }
  if (options.unreadable !== undefined && options.unreadable.length > 0) {
    push(
      `# WARNING: only their owner can read ${
        options.unreadable.map((p) => JSON.stringify(p)).join(", ")
      }:`,
      `# give ${SHIP_USER} read access, also to the files rotation creates`,
      `# (e.g. setfacl -d -m u:${SHIP_USER}:r on the folder), or the unit cannot ship them.`,
    );
  }
  push(
    "UMask=0077",
    "",
    "# The kernel drops every packet to or from any other address.",
    "IPAddressDeny=any",
  );
  for (const a of addresses) push(`IPAddressAllow=${a}`);
  if (byName) {
    push(
      `# ${options.server.hostname} resolved to the addresses above when the unit was made:`,
      "# regenerate the unit when they change. The name servers it is resolved with:",
    );
    for (const a of nameServers) push(`IPAddressAllow=${a}`);
    if (nameServers.length === 0) {
      push("# (none found: give --server as an IP address)");
    }
  }
  push(
    // Deno's signal handling, and name lookups through NSS, use Unix sockets.
    `RestrictAddressFamilies=AF_INET AF_INET6${
      deno || byName ? " AF_UNIX" : ""
    }`,
    "",
    "# Files: everything read-only; the followed files' folders and the options'",
    "# files readable; only the state writable.",
    "ProtectSystem=strict",
    `ProtectHome=${home ? "tmpfs" : "yes"}`,
  );
  if (home) {
    const ro = [...folders, ...readOnly, ...program].filter((p) =>
      _underAny(p, HOME_DIRS)
    );
    const rw = readWrite.filter((p) => _underAny(p, HOME_DIRS));
    // "-": a followed folder that does not exist yet is waited for.
    if (ro.length > 0) {
      push(`BindReadOnlyPaths=${ro.map((p) => "-" + _bindWord(p)).join(" ")}`);
    }
    if (rw.length > 0) push(`BindPaths=${rw.map(_bindWord).join(" ")}`);
  }
  if (has("config")) {
    push(
      "# The folders below were read from --config as it is now:",
      "# regenerate the unit whenever it changes.",
    );
  }
  push(
    `ReadOnlyPaths=${
      [...folders.map((p) => "-" + _pathWord(p)), ...readOnly.map(_pathWord)]
        .join(" ")
    }`,
  );
  if (access.stateDirectory !== undefined) {
    push(
      `StateDirectory=${_pathWord(access.stateDirectory)}`,
      "StateDirectoryMode=0700",
    );
  } else {
    push(
      `# Must exist and be writable by ${SHIP_USER}.`,
      `ReadWritePaths=${readWrite.map(_pathWord).join(" ")}`,
    );
  }
  if (deno) {
    push("CacheDirectory=moat-ship", "Environment=DENO_DIR=%C/moat-ship/deno");
  }
  if (!privateTmp) {
    push("# A path above is in /tmp or /var/tmp: keep the host's.");
  }
  push(`PrivateTmp=${privateTmp ? "yes" : "no"}`);
  if (!privateDevices) push("# A path above is in /dev: keep the host's.");
  push(
    `PrivateDevices=${privateDevices ? "yes" : "no"}`,
    "PrivateMounts=yes",
    "",
    "# Privileges and the kernel.",
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "RemoveIPC=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources",
    "SystemCallErrorNumber=EPERM",
    "# MemoryDenyWriteExecute= stays off: the JavaScript JIT needs W+X pages.",
    "",
    "[Install]",
    "WantedBy=multi-user.target",
  );
  return l.join("\n") + "\n";
}
