/**
 * The kernel-level guard: an nftables ruleset that drops, in the kernel, every
 * new connection to moat's ports from a peer moat's allowlist refuses, so the
 * refused peer's SYN never reaches moat. Generated from the same compiled
 * allowlist the server uses. Pure: rules and ports in, ruleset text out;
 * `moat serve --print-nftables` prints it.
 *
 * The ruleset keeps to its own table, `table inet moat` (IPv4 and IPv6 in
 * one), and replaces it whole in one transaction (`nft -f` applies a file
 * atomically), so loading it again after a change is safe and other tables are
 * never touched.
 *
 * @module
 */

import { type Allowlist, formatCidr } from "./allowlist.ts";
import { type Cidr, mergeCidrs, subtractCidrs } from "./cidr.ts";
import { UsageError } from "./errors.ts";

/** Options for {@linkcode nftablesSets}. */
export interface NftablesSetsOptions {
  /**
   * Most networks in the allow sets when deny rules are subtracted. Past it
   * the allow sets hold the allow rules and the deny rules go in deny sets
   * that are checked first, which the kernel enforces just as exactly.
   *
   * @default {1024}
   */
  maxCidrs?: number;
}

/** Options for {@linkcode renderNftables}. */
export interface NftablesOptions extends NftablesSetsOptions {
  /** The compiled allowlist. */
  allowlist: Pick<Allowlist, "allow" | "deny" | "loopbackOnly">;
  /** moat's listening TCP ports: the main port, and the syslog port if any. */
  ports: readonly number[];
  /** `true` when some rules came from `--allow-file`, so the ruleset says to regenerate it when they change. */
  fromAllowFiles?: boolean;
  /** moat's version, for the header comment. */
  version?: string;
}

/** The address sets of the ruleset, as canonical CIDR text. */
export interface NftablesSets {
  /** IPv4 networks allowed, deny rules subtracted when `exact`. */
  allow4: string[];
  /** IPv6 networks allowed, deny rules subtracted when `exact`. */
  allow6: string[];
  /** IPv4 networks dropped before the allow sets are checked; empty when `exact`. */
  deny4: string[];
  /** IPv6 networks dropped before the allow sets are checked; empty when `exact`. */
  deny6: string[];
  /** `true` when the deny rules were subtracted from the allow sets. */
  exact: boolean;
}

/** The table the ruleset owns. */
const TABLE = "inet moat";
/** Default for {@linkcode NftablesSetsOptions.maxCidrs}. */
const DEFAULT_MAX_CIDRS = 1024;
/** The largest TCP port. */
const MAX_PORT = 65535;

/**
 * Computes the address sets of the ruleset: the allowlist's allow rules minus
 * its deny rules, split by family, each the fewest networks that cover it. If
 * subtracting would take more than `maxCidrs` networks, the deny rules stay
 * in their own sets instead (`exact: false`).
 *
 * @example The loopback default and a subtracted deny rule
 * ```ts
 * import assert from "node:assert/strict";
 * import { compileAllowlist } from "./allowlist.ts";
 * import { nftablesSets } from "./nftables.ts";
 *
 * assert.deepEqual(nftablesSets(compileAllowlist({})), {
 *   allow4: ["127.0.0.0/8"],
 *   allow6: ["::1/128"],
 *   deny4: [],
 *   deny6: [],
 *   exact: true,
 * });
 * const list = compileAllowlist({ allow: ["10.0.0.0/30"], deny: ["10.0.0.1"] });
 * assert.deepEqual(nftablesSets(list).allow4, ["10.0.0.0/32", "10.0.0.2/31"]);
 * ```
 *
 * @param allowlist The compiled allowlist.
 * @param options The limit on subtracted networks.
 * @returns The sets.
 */
export function nftablesSets(
  allowlist: Pick<Allowlist, "allow" | "deny">,
  options: NftablesSetsOptions = {},
): NftablesSets {
  const { cidrs, exact } = subtractCidrs(allowlist.allow, allowlist.deny, {
    maxCidrs: options.maxCidrs ?? DEFAULT_MAX_CIDRS,
  });
  const deny = exact ? [] : mergeCidrs(allowlist.deny);
  return {
    allow4: _texts(cidrs, 4),
    allow6: _texts(cidrs, 6),
    deny4: _texts(deny, 4),
    deny6: _texts(deny, 6),
    exact,
  };
}

/** The canonical texts of the networks of one family. */
function _texts(cidrs: readonly Cidr[], family: 4 | 6): string[] {
  return cidrs.filter((c) => c.family === family).map(formatCidr);
}

/** The ports, checked, without repeats, in ascending order. */
function _ports(ports: readonly number[]): number[] {
  if (ports.length === 0) {
    throw new UsageError("Cannot print an nftables ruleset: no port given");
  }
  for (const port of ports) {
    if (port === 0) {
      throw new UsageError(
        "Cannot print an nftables ruleset for port 0: the port is not known until moat listens; give --port N (and --syslog-port N)",
      );
    }
    if (!Number.isInteger(port) || port < 1 || port > MAX_PORT) {
      throw new UsageError(
        `Cannot print an nftables ruleset: invalid port "${port}"`,
      );
    }
  }
  return [...new Set(ports)].sort((a, b) => a - b);
}

/** An interval set of one family, with its elements one per line. */
function _set(name: string, family: 4 | 6, elements: readonly string[]) {
  const lines = [
    `\tset ${name} {`,
    `\t\ttype ${family === 4 ? "ipv4_addr" : "ipv6_addr"}`,
    "\t\tflags interval",
  ];
  // nft refuses an empty `elements = { }`: an empty set has no such line.
  if (elements.length > 0) {
    lines.push(
      "\t\telements = {",
      ...elements.map((e) => `\t\t\t${e},`),
      "\t\t}",
    );
  }
  lines.push("\t}");
  return lines;
}

/**
 * Renders the nftables ruleset that enforces the allowlist in the kernel for
 * moat's TCP ports. Of the TCP packets to one of `ports`, it accepts those of
 * established and related connections and those from an address in the allow
 * sets (deny rules subtracted), and drops the rest: a drop, not a reject, so a
 * refused peer gets no answer and moat never sees its SYN. Other ports and other tables are not touched. Loading it replaces
 * the table whole: `table inet moat {}` makes sure the table exists so that
 * the `delete table` that follows works on the first load too.
 *
 * @example Print the ruleset for a LAN server
 * ```ts
 * import assert from "node:assert/strict";
 * import { compileAllowlist } from "./allowlist.ts";
 * import { renderNftables } from "./nftables.ts";
 *
 * const text = renderNftables({
 *   allowlist: compileAllowlist({
 *     allow: ["192.168.1.0/24"],
 *     deny: ["192.168.1.128/25"],
 *   }),
 *   ports: [4320, 5514],
 * });
 * assert.match(text, /^table inet moat \{\}\ndelete table inet moat$/m);
 * assert.match(text, /^\t\t\t192\.168\.1\.0\/25,$/m);
 * assert.match(text, /^\t\ttcp dport \{ 4320, 5514 \} jump guard$/m);
 * assert.match(text, /^\t\tdrop$/m);
 * ```
 *
 * @param options The allowlist, the ports and the header details.
 * @returns The ruleset text for `nft -f`, ending with a newline.
 * @throws {UsageError} If no port is given, or a port is 0 (not known until
 * moat listens) or not a TCP port number.
 */
export function renderNftables(options: NftablesOptions): string {
  const { allowlist } = options;
  const ports = _ports(options.ports);
  const sets = nftablesSets(
    allowlist,
    options.maxCidrs === undefined ? {} : { maxCidrs: options.maxCidrs },
  );
  const denied = allowlist.deny.map(formatCidr);
  const l: string[] = [];
  l.push(
    `# Generated by \`moat serve --print-nftables\`${
      options.version ? ` (moat ${options.version})` : ""
    }.`,
    `# The kernel-level guard for moat's TCP port${
      ports.length === 1 ? "" : "s"
    } ${ports.join(", ")}: a new connection from an`,
    "# address moat's allowlist refuses is dropped before moat sees it.",
    "# Load it, and load it again after every change to the allowlist, with",
    "#   nft -f FILE",
    `# It replaces table ${TABLE} whole, in one transaction, and touches no other table.`,
  );
  if (allowlist.loopbackOnly) {
    l.push("# No --allow given: loopback only, as moat itself enforces.");
  }
  if (denied.length > 0) {
    l.push(
      sets.exact
        ? `# Deny rules (${
          denied.join(", ")
        }) are subtracted from the allow sets.`
        : `# Deny rules (${
          denied.join(", ")
        }) need too many networks to subtract: they are dropped first.`,
    );
  }
  if (sets.allow4.length + sets.allow6.length === 0) {
    l.push("# Every allowed network is also denied: nobody may connect.");
  }
  if (options.fromAllowFiles) {
    l.push(
      "# The sets were computed from the allow-file(s) as they are now:",
      "# print and load the ruleset again whenever they change.",
    );
  }
  l.push(
    "",
    `table ${TABLE} {}`,
    `delete table ${TABLE}`,
    "",
    `table ${TABLE} {`,
    ..._set("allow4", 4, sets.allow4),
    ..._set("allow6", 6, sets.allow6),
  );
  if (!sets.exact) {
    l.push(..._set("deny4", 4, sets.deny4), ..._set("deny6", 6, sets.deny6));
  }
  l.push(
    "",
    "\tchain input {",
    "\t\ttype filter hook input priority filter; policy accept;",
    `\t\ttcp dport { ${ports.join(", ")} } jump guard`,
    "\t}",
    "",
    "\tchain guard {",
    "\t\tct state established,related accept",
  );
  if (!sets.exact) {
    l.push("\t\tip saddr @deny4 drop", "\t\tip6 saddr @deny6 drop");
  }
  l.push(
    "\t\tip saddr @allow4 accept",
    "\t\tip6 saddr @allow6 accept",
    "\t\t# Everyone else: dropped, not rejected, so a refused peer never reaches moat.",
    "\t\tdrop",
    "\t}",
    "}",
  );
  return l.join("\n") + "\n";
}
