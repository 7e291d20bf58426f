// Amounts arrive in fen (int64, as bigint) and rates in basis points; they are shown with integer
// arithmetic only, so no figure is ever off by a floating-point rounding.

import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { lang } from "./i18n";

const YUAN = 100n; // fen per yuan
const WAN = 10_000n * YUAN; // 万元
const YI = 100_000_000n * YUAN; // 亿元
const MILLION = 1_000_000n * YUAN;
const BILLION = 1_000_000_000n * YUAN;

function grouped(digits: string): string {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** `abs / unit` written out exactly (every unit is a power of ten), trailing zeros dropped. */
function exact(abs: bigint, unit: bigint): string {
  const whole = grouped((abs / unit).toString());
  const scale = unit.toString().length - 1;
  const frac = (abs % unit).toString().padStart(scale, "0").replace(/0+$/, "");
  return frac ? `${whole}.${frac}` : whole;
}

/** `abs / unit` rounded half up to three significant digits (at least the whole part). */
function sig3(abs: bigint, unit: bigint): string {
  const wholeDigits = (abs / unit).toString().length;
  const places = Math.max(0, 3 - wholeDigits);
  const pow = 10n ** BigInt(places);
  const rounded = (abs * pow * 2n + unit) / (2n * unit);
  const text = rounded.toString().padStart(places + 1, "0");
  if (places === 0) return grouped(text);
  const frac = text.slice(-places).replace(/0+$/, "");
  const whole = text.slice(0, -places);
  return frac ? `${whole}.${frac}` : whole;
}

function sign(fen: bigint): [string, bigint] {
  return fen < 0n ? ["-", -fen] : ["", fen];
}

/** An exact amount: `500万元`, `1.2345亿元`, `3,000.50元`; in English `¥5,000,000.00`. */
export function money(fen: bigint): string {
  const [s, abs] = sign(fen);
  if (lang() === "en") {
    const cents = (abs % YUAN).toString().padStart(2, "0");
    return `${s}¥${grouped((abs / YUAN).toString())}.${cents}`;
  }
  if (abs >= YI) return `${s}${exact(abs, YI)}亿元`;
  if (abs >= WAN) return `${s}${exact(abs, WAN)}万元`;
  const cents = (abs % YUAN).toString().padStart(2, "0");
  return `${s}${grouped((abs / YUAN).toString())}.${cents}元`;
}

/** A headline figure to three significant digits: `¥35.6亿`, `¥856万`; `¥3.56 billion`. */
export function moneyShort(fen: bigint): string {
  const [s, abs] = sign(fen);
  if (lang() === "en") {
    if (abs >= BILLION) return `${s}¥${sig3(abs, BILLION)} billion`;
    if (abs >= MILLION) return `${s}¥${sig3(abs, MILLION)} million`;
    return `${s}¥${grouped((abs / YUAN).toString())}`;
  }
  // 9,995万 rounds to 1.00亿, not to 10,000万.
  if (abs >= YI || sig3(abs, WAN) === "10,000") return `${s}¥${sig3(abs, YI)}亿`;
  if (abs >= WAN) return `${s}¥${sig3(abs, WAN)}万`;
  return `${s}¥${grouped((abs / YUAN).toString())}`;
}

/** Yuan as typed (`1200000`, `1,200,000.5`) to fen; null when it is not an amount. */
export function parseYuan(text: string): bigint | null {
  const clean = text.replace(/[,，\s]/g, "");
  const m = /^(\d{1,13})(?:\.(\d{1,2}))?$/.exec(clean);
  if (!m) return null;
  return BigInt(m[1]) * YUAN + BigInt((m[2] ?? "").padEnd(2, "0"));
}

/** Fen to the yuan a form field shows (`1200000.5`). */
export function yuanInput(fen: bigint): string {
  const cents = fen % YUAN;
  const whole = (fen / YUAN).toString();
  if (cents === 0n) return whole;
  return `${whole}.${cents.toString().padStart(2, "0").replace(/0$/, "")}`;
}

/** 435 bps as `4.35%`. */
export function rate(bps: number): string {
  const abs = Math.abs(bps);
  return `${bps < 0 ? "-" : ""}${Math.trunc(abs / 100)}.${String(abs % 100).padStart(2, "0")}%`;
}

/** `4.35` (percent, as typed) to 435 bps; null when it is not a rate with at most 2 decimals. */
export function parseRate(text: string): number | null {
  const m = /^(\d{1,3})(?:\.(\d{1,2}))?%?$/.exec(text.trim());
  if (!m) return null;
  return Number(m[1]) * 100 + Number((m[2] ?? "").padEnd(2, "0"));
}

export function count(n: bigint | number): string {
  return grouped(n.toString());
}

/** A calendar date as the API sends it (`2026-12-04`): `2026年12月4日` in Chinese. */
export function day(iso: string): string {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(iso);
  if (!m) return iso;
  return lang() === "en" ? iso : `${m[1]}年${Number(m[2])}月${Number(m[3])}日`;
}

/** A timestamp in the browser's time zone: `2026年12月4日 09:30`; `2026-12-04 09:30`. */
export function time(ts: Timestamp | undefined): string {
  if (!ts) return "—";
  const d = new Date(Number(ts.seconds) * 1000);
  const pad = (n: number) => String(n).padStart(2, "0");
  const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return `${day(date)} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Today in the browser's time zone, `YYYY-MM-DD`, shifted by `days`. */
export function isoDay(days = 0): string {
  const d = new Date(Date.now() + days * 86_400_000);
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** A duration in seconds as `3小时12分` / `3 h 12 min`. */
export function duration(seconds: bigint | undefined): string {
  if (seconds === undefined) return "—";
  const s = Number(seconds);
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  if (lang() === "en") return hours ? `${hours} h ${minutes} min` : minutes ? `${minutes} min ${s % 60} s` : `${s} s`;
  return hours ? `${hours}小时${minutes}分` : minutes ? `${minutes}分${s % 60}秒` : `${s}秒`;
}
