import { test } from "node:test";
import assert from "node:assert/strict";
import { formatCidr, parseRule } from "../lib/allowlist.ts";
import { type Cidr, mergeCidrs, subtractCidrs } from "../lib/cidr.ts";

/** Parses rules, formats the result: the tables below read as text. */
function merge(rules: string[]): string[] {
  return mergeCidrs(rules.map(parseRule)).map(formatCidr);
}

function subtract(allow: string[], deny: string[], maxCidrs?: number) {
  const { cidrs, exact } = subtractCidrs(
    allow.map(parseRule),
    deny.map(parseRule),
    maxCidrs === undefined ? {} : { maxCidrs },
  );
  return { cidrs: cidrs.map(formatCidr), exact };
}

test("mergeCidrs joins halves, drops covered networks and sorts", () => {
  const rows: [string[], string[]][] = [
    [[], []],
    [["10.0.0.0/8"], ["10.0.0.0/8"]],
    [["10.0.0.0/8", "10.0.0.0/8"], ["10.0.0.0/8"]],
    [["10.1.2.3", "10.0.0.0/8", "10.1.0.0/16"], ["10.0.0.0/8"]],
    [["10.0.0.128/25", "10.0.0.0/25"], ["10.0.0.0/24"]],
    // Three pieces that join in two steps.
    [["10.0.0.192/26", "10.0.0.0/25", "10.0.0.128/26"], ["10.0.0.0/24"]],
    // Neighbours that are not halves of one network stay apart.
    [["10.0.1.0/24", "10.0.2.0/24"], ["10.0.1.0/24", "10.0.2.0/24"]],
    [["10.0.0.0/25", "10.0.1.0/25"], ["10.0.0.0/25", "10.0.1.0/25"]],
    [["0.0.0.0/1", "128.0.0.0/1"], ["0.0.0.0/0"]],
    [["::/1", "8000::/1", "0.0.0.0/0"], ["0.0.0.0/0", "::/0"]],
    [["::1", "127.0.0.0/8"], ["127.0.0.0/8", "::1/128"]],
    [["::", "::1", "::2/127"], ["::/126"]],
    [["2001:db8::/33", "2001:db8:8000::/33", "2001:db8::5"], [
      "2001:db8::/32",
    ]],
  ];
  for (const [input, expected] of rows) {
    assert.deepEqual(merge(input), expected, input.join(" "));
  }
});

test("subtractCidrs subtracts deny networks into the fewest prefixes", () => {
  const rows: { allow: string[]; deny: string[]; expected: string[] }[] = [
    {
      allow: ["10.0.0.0/30"],
      deny: ["10.0.0.1"],
      expected: [
        "10.0.0.0/32",
        "10.0.0.2/31",
      ],
    },
    {
      allow: ["192.168.1.0/24"],
      deny: ["192.168.1.13"],
      expected: [
        "192.168.1.0/29",
        "192.168.1.8/30",
        "192.168.1.12/32",
        "192.168.1.14/31",
        "192.168.1.16/28",
        "192.168.1.32/27",
        "192.168.1.64/26",
        "192.168.1.128/25",
      ],
    },
    {
      allow: ["10.0.0.0/24"],
      deny: ["10.0.0.0/25"],
      expected: [
        "10.0.0.128/25",
      ],
    },
    { allow: ["10.0.0.5"], deny: ["10.0.0.0/8"], expected: [] },
    { allow: ["10.0.0.0/8"], deny: ["10.0.0.0/8"], expected: [] },
    {
      allow: ["10.0.0.0/8"],
      deny: ["192.168.0.0/16", "::/0"],
      expected: [
        "10.0.0.0/8",
      ],
    },
    // Two holes whose leftovers join back up: 10.0.0.0/30 minus .1 and .0.
    {
      allow: ["10.0.0.0/30"],
      deny: ["10.0.0.1", "10.0.0.0"],
      expected: [
        "10.0.0.2/31",
      ],
    },
    // Overlapping allow rules are merged before subtracting.
    {
      allow: ["10.0.0.0/31", "10.0.0.0/30", "10.0.0.2"],
      deny: ["10.0.0.3"],
      expected: ["10.0.0.0/31", "10.0.0.2/32"],
    },
    { allow: ["::/0"], deny: ["8000::/1"], expected: ["::/1"] },
    {
      allow: ["127.0.0.0/8", "::1"],
      deny: ["127.0.0.53"],
      expected: [
        "127.0.0.0/27",
        "127.0.0.32/28",
        "127.0.0.48/30",
        "127.0.0.52/32",
        "127.0.0.54/31",
        "127.0.0.56/29",
        "127.0.0.64/26",
        "127.0.0.128/25",
        "127.0.1.0/24",
        "127.0.2.0/23",
        "127.0.4.0/22",
        "127.0.8.0/21",
        "127.0.16.0/20",
        "127.0.32.0/19",
        "127.0.64.0/18",
        "127.0.128.0/17",
        "127.1.0.0/16",
        "127.2.0.0/15",
        "127.4.0.0/14",
        "127.8.0.0/13",
        "127.16.0.0/12",
        "127.32.0.0/11",
        "127.64.0.0/10",
        "127.128.0.0/9",
        "::1/128",
      ],
    },
  ];
  for (const { allow, deny, expected } of rows) {
    assert.deepEqual(
      subtract(allow, deny),
      { cidrs: expected, exact: true },
      `[${allow}] - [${deny}]`,
    );
  }
});

test("subtractCidrs returns the merged allow networks past maxCidrs", () => {
  assert.equal(subtract(["::/0"], ["2001:db8::1"]).cidrs.length, 128);
  assert.deepEqual(subtract(["::/0"], ["2001:db8::1"], 127), {
    cidrs: ["::/0"],
    exact: false,
  });
  assert.deepEqual(
    subtract(["10.0.0.0/25", "10.0.0.128/25"], ["10.0.0.1"], 4),
    { cidrs: ["10.0.0.0/24"], exact: false },
  );
  assert.deepEqual(subtract(["10.0.0.0/24"], ["10.0.0.1"], 8), {
    cidrs: [
      "10.0.0.0/32",
      "10.0.0.2/31",
      "10.0.0.4/30",
      "10.0.0.8/29",
      "10.0.0.16/28",
      "10.0.0.32/27",
      "10.0.0.64/26",
      "10.0.0.128/25",
    ],
    exact: true,
  });
});

test("subtractCidrs clears host bits of a hand-made network", () => {
  const sloppy: Cidr = {
    family: 4,
    bytes: new Uint8Array([10, 0, 0, 77]),
    prefix: 24,
  };
  assert.deepEqual(
    subtractCidrs([sloppy], []).cidrs.map(formatCidr),
    ["10.0.0.0/24"],
  );
});

/**
 * A reference model that does not share code with lib/cidr.ts: every address
 * of a small block, in or out by a bit-string prefix test.
 */
function covers(rules: readonly string[], addr: string): boolean {
  return rules.some((rule) => {
    const r = parseRule(rule);
    const a = parseRule(addr);
    if (r.family !== a.family) return false;
    return bitString(a.bytes).slice(0, r.prefix) ===
      bitString(r.bytes).slice(0, r.prefix);
  });
}

function bitString(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(2).padStart(8, "0")).join("");
}

/**
 * All 32 addresses of 198.51.100.0/27 and of 2001:db8::/123: small, so that
 * random rules often touch and overlap.
 */
const UNIVERSE = Array.from({ length: 32 }, (_, i) => [
  `198.51.100.${i}`,
  `2001:db8::${i.toString(16)}`,
]).flat();

/** A random network inside the universe (prefix 27 to 32, or 123 to 128). */
function randomRule(random: () => number): string {
  const host = Math.floor(random() * 32);
  const bits = Math.floor(random() * 6);
  const net = host & (0xff << bits) & 0xff;
  return random() < 0.5
    ? `198.51.100.${net}/${32 - bits}`
    : `2001:db8::${net.toString(16)}/${128 - bits}`;
}

test("subtractCidrs matches a per-address model and is minimal on random rules", () => {
  const random = mulberry32(0xc1d2);
  const failures: string[] = [];
  for (let n = 0; n < 400; n++) {
    const allow = Array.from(
      { length: 1 + Math.floor(random() * 4) },
      () => randomRule(random),
    );
    const deny = Array.from(
      { length: Math.floor(random() * 5) },
      () => randomRule(random),
    );
    const { cidrs, exact } = subtract(allow, deny);
    assert.equal(exact, true);
    for (const addr of UNIVERSE) {
      const expected = covers(allow, addr) && !covers(deny, addr);
      if (covers(cidrs, addr) !== expected) {
        failures.push(`[${allow}] - [${deny}] at ${addr}: got [${cidrs}]`);
      }
    }
    // Fewest prefixes: none inside another, no two that are halves of one.
    const nets = cidrs.map(parseRule).map((c) => ({
      text: formatCidr(c),
      family: c.family,
      bits: bitString(c.bytes).slice(0, c.prefix),
    }));
    for (const a of nets) {
      for (const b of nets) {
        if (a === b || a.family !== b.family) continue;
        if (b.bits.startsWith(a.bits)) {
          failures.push(`${a.text} covers ${b.text}`);
        }
        if (
          a.bits.length === b.bits.length && a.bits.length > 0 &&
          a.bits.slice(0, -1) === b.bits.slice(0, -1)
        ) failures.push(`${a.text} and ${b.text} are halves of one network`);
      }
    }
  }
  assert.deepEqual(failures.slice(0, 10), []);
});

/** A small seeded PRNG (mulberry32), so random tests are reproducible. */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return function next(): number {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
