/**
 * An independent RFC 9162 §2.1 reference, written from the RFC's definitions
 * alone and importing nothing of moat: MTH, PATH and PROOF as the RFC states
 * them (recursion on lists of leaves), and the §2.1.3.2 / §2.1.4.2
 * verification algorithms. Tests check moat's proofs against it, and an
 * outside verifier could be this file.
 *
 * @module
 */

import { createHash } from "node:crypto";

export function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

/** MTH({d(0)}) = SHA-256(0x00 || d(0)). */
export function refLeaf(d: Uint8Array): Uint8Array {
  return sha256(new Uint8Array([0]), d);
}

function refNode(a: Uint8Array, b: Uint8Array): Uint8Array {
  return sha256(new Uint8Array([1]), a, b);
}

/** k: the largest power of two smaller than n. */
function k(n: number): number {
  let p = 1;
  while (p * 2 < n) p *= 2;
  return p;
}

/** MTH(D[n]) over leaf hashes (each already MTH of one entry). */
export function refMth(h: Uint8Array[]): Uint8Array {
  if (h.length === 0) return sha256();
  if (h.length === 1) return h[0]!;
  const s = k(h.length);
  return refNode(refMth(h.slice(0, s)), refMth(h.slice(s)));
}

/** PATH(m, D[n]). */
export function refPath(m: number, h: Uint8Array[]): Uint8Array[] {
  if (h.length <= 1) return [];
  const s = k(h.length);
  return m < s
    ? [...refPath(m, h.slice(0, s)), refMth(h.slice(s))]
    : [...refPath(m - s, h.slice(s)), refMth(h.slice(0, s))];
}

function subproof(m: number, h: Uint8Array[], b: boolean): Uint8Array[] {
  const n = h.length;
  if (m === n) return b ? [] : [refMth(h)];
  const s = k(n);
  return m <= s
    ? [...subproof(m, h.slice(0, s), b), refMth(h.slice(s))]
    : [...subproof(m - s, h.slice(s), false), refMth(h.slice(0, s))];
}

/** PROOF(m, D[n]) for 0 < m < n. */
export function refProof(m: number, h: Uint8Array[]): Uint8Array[] {
  return subproof(m, h, true);
}

function eq(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** RFC 9162 §2.1.3.2, step by step (BigInt so any size works). */
export function refVerifyInclusion(
  leaf: Uint8Array,
  index: number,
  size: number,
  path: Uint8Array[],
  root: Uint8Array,
): boolean {
  if (index >= size) return false;
  let fn = BigInt(index);
  let sn = BigInt(size - 1);
  let r = leaf;
  for (const p of path) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      r = refNode(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = refNode(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && eq(r, root);
}

/** RFC 9162 §2.1.4.2, step by step, for 0 < first < second. */
export function refVerifyConsistency(
  first: number,
  second: number,
  firstHash: Uint8Array,
  secondHash: Uint8Array,
  proof: Uint8Array[],
): boolean {
  if (first <= 0 || first >= second) return false;
  const path = (first & (first - 1)) === 0 ? [firstHash, ...proof] : proof;
  if (path.length === 0) return false;
  let fn = BigInt(first - 1);
  let sn = BigInt(second - 1);
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = path[0]!;
  let sr = path[0]!;
  for (const c of path.slice(1)) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      fr = refNode(c, fr);
      sr = refNode(c, sr);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      sr = refNode(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && eq(fr, firstHash) && eq(sr, secondHash);
}
