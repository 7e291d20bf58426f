// A bank's inbox: its referrals (ListReferrals), kept current by WatchReferrals (server streaming
// over gRPC-Web), resumed from the last cursor seen after a reload or a dropped connection; and
// the bank's answers: acknowledge, request information, approve, decline, record a disbursement.

import { ReferralStatus, DeclineReason, type Referral } from "../gen/finmatch/v1/common_pb";
import { partner, problem, session, Code } from "../api";
import { field, h, replace } from "../dom";
import { count, day, isoDay, money, parseRate, parseYuan, rate, time, yuanInput } from "../format";
import {
  collateral, declineReason, eventKind, factor, purpose, referralStatus, size, t,
} from "../i18n";
import { badge, dialog, labelled, markFields, showProblem, toast } from "../ui";

const OPEN = [ReferralStatus.PENDING, ReferralStatus.ACKNOWLEDGED, ReferralStatus.INFO_REQUESTED, ReferralStatus.APPROVED];

/** The last cursor this tab has applied, per token (a reload resumes after it). */
function cursorKey(): string {
  return `finmatch.cursor.${session.token.slice(-12)}`;
}

export async function inbox(main: HTMLElement, _arg: string, signal: AbortSignal): Promise<void> {
  const referrals = new Map<string, Referral>();
  let cursor = BigInt(sessionStorage.getItem(cursorKey()) ?? "0");
  const state = h("span", { class: "live", id: "live-state" });
  const errors = h("div");
  const openOnly = h("input", { type: "checkbox", name: "open", checked: true, id: "open-only" });
  const list = h("div", { id: "inbox-list" });
  // The stream's events, newest first (a first visit replays the bank's history from cursor 0).
  const feed = h("ul", { class: "feed", id: "feed" });
  replace(main,
    h("h1", {}, t("inboxTitle"), " ", state),
    errors,
    h("label", { class: "check" }, openOnly, t("openOnly")),
    h("div", { class: "grid2 wide-left" },
      h("section", { class: "card" }, list),
      h("section", { class: "card" }, h("h2", {}, t("activity")), feed)));

  const draw = () => {
    const shown = [...referrals.values()]
      .filter((r) => !openOnly.checked || OPEN.includes(r.status))
      .sort((a, b) => Number((a.slaDeadline?.seconds ?? 0n) - (b.slaDeadline?.seconds ?? 0n)));
    replace(list, shown.length === 0 ? h("p", { class: "muted" }, t("none")) : h("div", { class: "inbox" }, shown.map(card)));
  };
  openOnly.addEventListener("change", draw);

  const card = (r: Referral): HTMLElement => {
    const need = r.need;
    const e = r.enterprise;
    const buttons = h("div", { class: "actions" });
    const act = (label: string, cls: string, fn: () => void) =>
      buttons.append(h("button", { type: "button", class: cls, "data-action": cls, onclick: fn }, label));
    // The referral's state machine: what the API allows from each status.
    switch (r.status) {
      case ReferralStatus.PENDING:
        act(t("acknowledge"), "acknowledge", () => void acknowledge(r));
        act(t("decline"), "decline", () => decline(r));
        break;
      case ReferralStatus.ACKNOWLEDGED:
        act(t("requestInfo"), "request-info", () => requestInfo(r));
        act(t("approve"), "approve", () => approve(r));
        act(t("decline"), "decline", () => decline(r));
        break;
      case ReferralStatus.INFO_REQUESTED:
        // Acknowledging again says the information arrived; then it can be approved.
        act(t("infoReceived"), "acknowledge", () => void acknowledge(r));
        act(t("decline"), "decline", () => decline(r));
        break;
      case ReferralStatus.APPROVED:
      case ReferralStatus.DISBURSED: // a further tranche
        act(t("disburse"), "disburse", () => disburse(r));
        break;
    }
    return h("article", { class: "referral", "data-referral": r.id, "data-status": ReferralStatus[r.status] },
      h("header", {},
        h("strong", {}, e?.name ?? t("noConsent")), " ",
        badge(referralStatus(r.status), "referral"),
        h("span", { class: "muted" }, ` ${t("deadline")} ${time(r.slaDeadline)}`)),
      need && h("p", {},
        `${money(need.amountMinor)} · ${need.termMonths} ${t("months")} · ${purpose(need.purpose)} · `,
        need.collateral.map(collateral).join("、"),
        need.maxRateBps !== undefined ? ` · ≤ ${rate(need.maxRateBps)}` : "",
        need.neededBy ? ` · ${t("neededBy")} ${day(need.neededBy)}` : ""),
      h("details", {},
        h("summary", {}, `${t("score")} ${r.score} · ${t("factors")}`),
        h("ul", { class: "factors" }, r.factors.map((f) => h("li", {}, `${factor(f.name)} +${f.points}`, f.note && ` · ${f.note}`))),
        e ? h("dl", { class: "details" },
          h("dt", {}, t("creditCode")), h("dd", {}, e.creditCode),
          h("dt", {}, t("region")), h("dd", {}, e.regionCode),
          h("dt", {}, t("industry")), h("dd", {}, e.industryCode),
          h("dt", {}, t("size")), h("dd", {}, size(e.size)),
          h("dt", {}, t("employees")), h("dd", {}, count(e.employees)),
          h("dt", {}, t("revenue")), h("dd", {}, money(e.annualRevenueMinor)),
          h("dt", {}, t("contact")), h("dd", {}, [e.contactName, e.contactPhone].filter(Boolean).join(" · ")))
          : h("p", { class: "muted" }, t("noConsent"))),
      r.approvedAmountMinor !== undefined && h("p", { class: "approved-terms" },
        `${t("approvedTerms")}: ${money(r.approvedAmountMinor)} · ${rate(r.approvedRateBps ?? 0)} · ${r.approvedTermMonths ?? 0} ${t("months")}`),
      r.declineReason ? h("p", {}, `${declineReason(r.declineReason)} ${r.declineNote}`) : null,
      r.infoRequestMessage && h("p", {}, `${t("infoRequested")}: ${r.infoRequestMessage}`),
      buttons);
  };

  const update = (r: Referral | undefined) => {
    if (!r) return;
    const known = referrals.get(r.id);
    // An answer's response and the stream's event can arrive in either order: keep the newer.
    if (known && (known.updateTime?.seconds ?? 0n) > (r.updateTime?.seconds ?? 0n)) return;
    referrals.set(r.id, r.need ? r : { ...r, need: known?.need, enterprise: known?.enterprise });
    draw();
  };

  const acknowledge = async (r: Referral) => {
    try {
      update((await partner.acknowledgeReferral({ referralId: r.id })).referral);
      toast(t("done"));
    } catch (err) {
      showProblem(errors, err);
    }
  };
  const requestInfo = (r: Referral) =>
    dialog(t("requestInfo"), [labelled(t("infoMessage"), h("textarea", { name: "message", rows: 3, required: true }), "message")],
      t("confirm"), async (form) => {
        update((await partner.requestInformation({ referralId: r.id, message: field(form, "message") })).referral);
        toast(t("done"));
      });
  const approve = (r: Referral) => {
    const key = crypto.randomUUID(); // one decision, however often the button is pressed
    dialog(t("approve"), [
      labelled(t("amountYuan"), h("input", { name: "amount", inputmode: "decimal", value: r.need ? yuanInput(r.need.amountMinor) : "" }), "approve.amount_minor"),
      labelled(t("rateBps"), h("input", { name: "rate", inputmode: "decimal", value: r.need?.maxRateBps !== undefined ? rate(r.need.maxRateBps).replace("%", "") : "" }), "approve.rate_bps"),
      labelled(t("term"), h("input", { name: "term", type: "number", min: 1, value: r.need?.termMonths ?? "" }), "approve.term_months"),
    ], t("approve"), async (form) => {
      const amountMinor = parseYuan(field(form, "amount"));
      const rateBps = parseRate(field(form, "rate"));
      const local: [string, string][] = [];
      if (amountMinor === null) local.push(["approve.amount_minor", t("errAmount")]);
      if (rateBps === null) local.push(["approve.rate_bps", t("errRate")]);
      markFields(form, local);
      if (local.length) throw new Error(t("errInvalid"));
      const response = await partner.decideReferral({
        referralId: r.id, idempotencyKey: key,
        decision: { case: "approve", value: { amountMinor: amountMinor!, rateBps: rateBps!, termMonths: Number(field(form, "term")) } },
      });
      update(response.referral);
      toast(t("done"));
    });
  };
  const decline = (r: Referral) => {
    const key = crypto.randomUUID();
    const reasons = [DeclineReason.OUTSIDE_APPETITE, DeclineReason.INSUFFICIENT_COLLATERAL, DeclineReason.CREDIT_HISTORY,
      DeclineReason.INCOMPLETE_INFORMATION, DeclineReason.CAPACITY, DeclineReason.OTHER];
    dialog(t("decline"), [
      labelled(t("declineReason"), h("select", { name: "reason" }, reasons.map((d) => h("option", { value: d }, declineReason(d)))), "decline.reason"),
      labelled(t("declineNote"), h("textarea", { name: "note", rows: 2 }), "decline.note"),
    ], t("decline"), async (form) => {
      const response = await partner.decideReferral({
        referralId: r.id, idempotencyKey: key,
        decision: { case: "decline", value: { reason: Number(field(form, "reason")), note: field(form, "note") } },
      });
      update(response.referral);
      toast(t("done"));
    });
  };
  const disburse = (r: Referral) =>
    dialog(t("disburse"), [
      labelled(t("loanReference"), h("input", { name: "reference", required: true }), "loan_reference"),
      labelled(t("amountYuan"), h("input", { name: "amount", inputmode: "decimal", value: r.approvedAmountMinor !== undefined ? yuanInput(r.approvedAmountMinor) : "" }), "amount_minor"),
      labelled(t("rateBps"), h("input", { name: "rate", inputmode: "decimal", value: r.approvedRateBps !== undefined ? rate(r.approvedRateBps).replace("%", "") : "" }), "rate_bps"),
      labelled(t("term"), h("input", { name: "term", type: "number", min: 1, value: r.approvedTermMonths ?? "" }), "term_months"),
      labelled(t("disbursedOn"), h("input", { name: "on", type: "date", value: isoDay(), max: isoDay() }), "disbursed_on"),
    ], t("disburse"), async (form) => {
      const amountMinor = parseYuan(field(form, "amount"));
      const rateBps = parseRate(field(form, "rate"));
      const local: [string, string][] = [];
      if (amountMinor === null) local.push(["amount_minor", t("errAmount")]);
      if (rateBps === null) local.push(["rate_bps", t("errRate")]);
      markFields(form, local);
      if (local.length) throw new Error(t("errInvalid"));
      const response = await partner.recordDisbursement({
        referralId: r.id, loanReference: field(form, "reference"), amountMinor: amountMinor!, rateBps: rateBps!,
        termMonths: Number(field(form, "term")), disbursedOn: field(form, "on"),
      });
      update(response.referral);
      toast(t("done"));
    });

  // What is open now, then the stream from the last cursor this tab applied.
  let pageToken = "";
  do {
    const page = await partner.listReferrals({ pageSize: 100, pageToken, statuses: OPEN });
    for (const r of page.referrals) referrals.set(r.id, r);
    pageToken = page.nextPageToken;
  } while (pageToken && referrals.size < 2000);
  draw();

  const note = (text: string) => {
    feed.prepend(h("li", {}, text));
    while (feed.children.length > 30) feed.lastElementChild?.remove();
  };
  let backoff = 500;
  while (!signal.aborted) {
    try {
      state.textContent = t("live");
      state.className = "live on";
      for await (const message of partner.watchReferrals({ afterCursor: cursor }, { signal })) {
        backoff = 500;
        const payload = message.payload;
        if (payload.case === "event") {
          const ev = payload.value;
          const name = ev.referral?.enterprise?.name ?? referrals.get(ev.referral?.id ?? "")?.enterprise?.name;
          update(ev.referral);
          note(`${time(ev.time)} ${eventKind(ev.kind)} · ${name ?? ev.referral?.id.slice(0, 8) ?? ""}`);
          cursor = ev.cursor;
        } else if (payload.case === "heartbeat") {
          cursor = payload.value.cursor > cursor ? payload.value.cursor : cursor;
        }
        sessionStorage.setItem(cursorKey(), cursor.toString());
      }
    } catch (err) {
      if (signal.aborted) return;
      const p = problem(err);
      if (p.code === Code.Unauthenticated || p.code === Code.PermissionDenied) {
        showProblem(errors, err);
        return;
      }
    }
    if (signal.aborted) return;
    state.textContent = t("reconnecting");
    state.className = "live off";
    await new Promise((resolve) => setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 10_000);
  }
}
