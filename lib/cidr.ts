/**
 * Set arithmetic on IP networks: the union of a list of networks, and allow
 * networks minus deny networks, each as the fewest prefixes that cover exactly
 * the same addresses. Pure; used to write the kernel-level copies of the
 * allowlist (systemd's `IPAddressAllow=` and the nftables ruleset), which can
 * only say "allow these prefixes".
 *
 * @module
 */

/** An IP network: an address family, the network bytes and a prefix length. */
export interface Cidr {
  /** Address family. */
  family: 4 | 6;
  /** Network address: 4 bytes for IPv4, 16 for IPv6, host bits zero. */
  bytes: Uint8Array;
  /** Prefix length: 0 to 32 for IPv4, 0 to 128 for IPv6. */
  prefix: number;
}

/** Options for {@linkcode subtractCidrs}. */
export interface SubtractCidrsOptions {
  /**
   * Most networks to produce. Past it the subtraction stops and the result is
   * the allow networks alone, with `exact: false`.
   *
   * @default {1024}
   */
  maxCidrs?: number;
}

/** Result of {@linkcode subtractCidrs}. */
export interface SubtractedCidrs {
  /** The networks, IPv4 first, each family in ascending address order. */
  cidrs: Cidr[];
  /**
   * `true` when `cidrs` are exactly the allowed addresses minus the denied
   * ones; `false` when that would have taken more than `maxCidrs` networks, in
   * which case `cidrs` are the allowed addresses with nothing subtracted.
   */
  exact: boolean;
}

/** A network as a big integer, for the arithmetic. */
interface _Net {
  family: 4 | 6;
  /** Address width: 32 or 128. */
  bits: number;
  net: bigint;
  prefix: number;
}

/** Default for {@linkcode SubtractCidrsOptions.maxCidrs}. */
const DEFAULT_MAX_CIDRS = 1024;

function _toNet(cidr: Cidr): _Net {
  let net = 0n;
  for (const b of cidr.bytes) net = (net << 8n) | BigInt(b);
  const bits = cidr.bytes.length * 8;
  // Host bits are cleared, so a hand-made Cidr cannot widen the result.
  const shift = BigInt(bits - cidr.prefix);
  return {
    family: cidr.family,
    bits,
    net: (net >> shift) << shift,
    prefix: cidr.prefix,
  };
}

function _toCidr(n: _Net): Cidr {
  const bytes = new Uint8Array(n.bits / 8);
  let v = n.net;
  for (let i = bytes.length - 1; i >= 0; i--) {
    bytes[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return { family: n.family, bytes, prefix: n.prefix };
}

/** `true` if network `a` contains network `b` (or equals it). */
function _contains(a: _Net, b: _Net): boolean {
  if (a.family !== b.family || a.prefix > b.prefix) return false;
  const shift = BigInt(a.bits - a.prefix);
  return (a.net >> shift) === (b.net >> shift);
}

/** `piece` minus `hole`, as disjoint networks. */
function _subtract(piece: _Net, hole: _Net): _Net[] {
  if (_contains(hole, piece)) return [];
  if (!_contains(piece, hole)) return [piece];
  // Walk from `piece` down to `hole`: at each level keep the half that does
  // not hold `hole`.
  const out: _Net[] = [];
  for (let prefix = piece.prefix + 1; prefix <= hole.prefix; prefix++) {
    const shift = BigInt(piece.bits - prefix);
    const sibling = ((hole.net >> shift) ^ 1n) << shift;
    out.push({ family: piece.family, bits: piece.bits, net: sibling, prefix });
  }
  return out;
}

/** Orders by family, then address, then wider networks first. */
function _compare(a: _Net, b: _Net): number {
  return a.family - b.family || (a.net < b.net ? -1 : a.net > b.net ? 1 : 0) ||
    a.prefix - b.prefix;
}

/**
 * The fewest prefixes covering the union of `nets`: covered networks dropped,
 * then sibling pairs joined into their parent until none is left.
 */
function _merge(nets: readonly _Net[]): _Net[] {
  const sorted = [...nets].sort(_compare);
  const out: _Net[] = [];
  for (const n of sorted) {
    // Sorted by address with wider first, so a network that covers `n` is
    // the last one kept, if any.
    const last = out.at(-1);
    if (last !== undefined && _contains(last, n)) continue;
    let cur = n;
    for (;;) {
      const top = out.at(-1);
      if (
        top === undefined || top.family !== cur.family ||
        top.prefix !== cur.prefix || cur.prefix === 0
      ) break;
      const shift = BigInt(cur.bits - cur.prefix);
      // Siblings: the same parent, `top` the lower half and `cur` the upper.
      if ((top.net >> shift) + 1n !== (cur.net >> shift)) break;
      if (((top.net >> shift) & 1n) !== 0n) break;
      out.pop();
      cur = { ...top, prefix: top.prefix - 1 };
    }
    out.push(cur);
  }
  return out;
}

/**
 * The fewest networks that cover exactly the union of `cidrs`: a network
 * inside another is dropped and two halves of one network become that
 * network. IPv4 and IPv6 are kept apart.
 *
 * @example Join halves and drop covered networks
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatCidr, parseRule } from "./allowlist.ts";
 * import { mergeCidrs } from "./cidr.ts";
 *
 * const rules = ["10.0.0.128/25", "10.0.0.0/25", "10.0.0.7", "::1"];
 * assert.deepEqual(mergeCidrs(rules.map(parseRule)).map(formatCidr), [
 *   "10.0.0.0/24",
 *   "::1/128",
 * ]);
 * ```
 *
 * @param cidrs The networks, in any order, overlapping or not.
 * @returns The networks, IPv4 first, each family in ascending address order.
 */
export function mergeCidrs(cidrs: readonly Cidr[]): Cidr[] {
  return _merge(cidrs.map(_toNet)).map(_toCidr);
}

/**
 * The allowed networks minus the denied ones, as the fewest prefixes: for
 * writers that can only list what to allow (systemd's `IPAddressAllow=` wins
 * over `IPAddressDeny=`, so there is no "allow except"). `10.0.0.0/8` minus
 * `10.0.0.5/32` is 24 networks; `::/0` minus one address is 128. If the
 * result would take more than `maxCidrs` networks, nothing is subtracted and
 * `exact` is `false`.
 *
 * @example Subtract one address
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatCidr, parseRule } from "./allowlist.ts";
 * import { subtractCidrs } from "./cidr.ts";
 *
 * const { cidrs, exact } = subtractCidrs(
 *   [parseRule("10.0.0.0/30")],
 *   [parseRule("10.0.0.1")],
 * );
 * assert.deepEqual(cidrs.map(formatCidr), ["10.0.0.0/32", "10.0.0.2/31"]);
 * assert.equal(exact, true);
 * ```
 *
 * @param allow The allowed networks.
 * @param deny The denied networks; they win over `allow`.
 * @param options The limit on the result's size.
 * @returns The networks and whether the deny networks were subtracted.
 */
export function subtractCidrs(
  allow: readonly Cidr[],
  deny: readonly Cidr[],
  options: SubtractCidrsOptions = {},
): SubtractedCidrs {
  const maxCidrs = options.maxCidrs ?? DEFAULT_MAX_CIDRS;
  const allowed = _merge(allow.map(_toNet));
  let pieces = allowed;
  for (const hole of _merge(deny.map(_toNet))) {
    const next: _Net[] = [];
    for (const piece of pieces) next.push(..._subtract(piece, hole));
    if (next.length > maxCidrs) {
      return { cidrs: allowed.map(_toCidr), exact: false };
    }
    pieces = next;
  }
  return { cidrs: _merge(pieces).map(_toCidr), exact: true };
}
