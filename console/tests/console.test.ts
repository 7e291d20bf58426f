// The console in a real browser (Debian's Chromium, driven by playwright-core) against a real
// `finmatch dev` with the demo data, as a bureau officer and a bank's loan officer use it. What
// the pages show is checked against what the API answers to the tests' own calls. Each view's
// screenshot is written to FINMATCH_SCREENSHOTS (docs/console/ from .ci/console).
//
// Run through .ci/console, which starts the server and exports TOKEN, BANK_<X>, FINMATCH_URL.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  Channel, Collateral, NeedSchema, NeedStatus, Purpose, ReferralStatus, Role,
} from "../src/gen/finmatch/v1/common_pb";
import { api, bankTokens, baseUrl, env } from "./api";

const shots = process.env.FINMATCH_SCREENSHOTS ?? join(import.meta.dirname, "..", "screenshots");
const operator = api(env("TOKEN"));

let browser: Browser;
const contexts: BrowserContext[] = [];
const pageErrors: string[] = [];

/** A fresh browser profile (its own sessionStorage) at a 1280-pixel laptop's size, in zh-CN. */
async function newPage(): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: "zh-CN" });
  contexts.push(context);
  const page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(`${e.name}: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") pageErrors.push(`console: ${m.text()}`);
  });
  return page;
}

async function signIn(page: Page, token: string): Promise<void> {
  await page.goto(`${baseUrl}/`);
  await page.fill("#token", token);
  await page.press("#token", "Tab");
  await page.keyboard.press("Enter"); // the keyboard alone signs in
  await page.waitForSelector("header .role");
}

async function shot(page: Page, name: string): Promise<void> {
  // Not "network idle": the inbox keeps its watch stream open.
  await page.evaluate(() => document.fonts.ready.then(() => new Promise(requestAnimationFrame)));
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

/** Nothing is wider than the window: the layout works from a 1280-pixel screen up. */
async function fitsTheWindow(page: Page): Promise<void> {
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 1280, `the page is ${width} px wide at a 1280 px window`);
}

async function figure(page: Page, name: string): Promise<{ value: string; text: string }> {
  const el = page.locator(`[data-figure="${name}"]`);
  return {
    value: (await el.getAttribute("data-value")) ?? "",
    text: (await el.locator(".figure-value").textContent()) ?? "",
  };
}

before(async () => {
  mkdirSync(shots, { recursive: true });
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium" });
});

after(async () => {
  for (const c of contexts) await c.close();
  await browser?.close();
});

describe("the bureau's console", () => {
  let page: Page;
  before(async () => {
    page = await newPage();
    await signIn(page, env("TOKEN"));
  });

  test("the operator's dashboard shows GetSummary's figures, the demo's among them", async () => {
    await page.waitForSelector('[data-figure="enterprises"]');
    assert.equal(await page.getAttribute("header .role", "data-role"), "OPERATOR");
    const s = await operator.reporting.getSummary({});
    const expected: [string, bigint | number][] = [
      ["enterprises", s.enterprises], ["needs", s.needs], ["demand", s.demandMinor],
      ["routed", s.routedNeeds], ["approved", s.approvedNeeds], ["approved-amount", s.approvedMinor],
      ["funded", s.fundedNeeds], ["disbursed", s.disbursedMinor], ["funding-rate", s.fundingRateBps],
    ];
    for (const [name, value] of expected) {
      assert.equal((await figure(page, name)).value, String(value), `figure ${name}`);
    }
    assert.equal((await figure(page, "median-response")).value, String(s.medianTimeToFirstAnswer?.seconds ?? ""));

    // The demo data, as the issue states it.
    assert.deepEqual(await figure(page, "enterprises"), { value: "196", text: "196" });
    assert.equal((await figure(page, "demand")).text, "¥35.6亿");
    const program = s.byProgram[0];
    assert.ok(program, "the demo has a special-loan programme");
    assert.deepEqual(await figure(page, `program-${program.code}-enterprises`), { value: "12", text: "12" });
    assert.equal((await figure(page, `program-${program.code}-allocated`)).text, "¥1.37亿");

    // Charts drawn (funnel, banks, industries, regions, the programme's quota by bank).
    for (const id of ["funnel", "bank", "industry", "region", `quota-${program.programId}`]) {
      await page.waitForSelector(`#chart-${id} canvas`);
    }
    const quotaRows = await page.locator(".quota-table tbody tr").count();
    const { program: detail } = await operator.specialLoans.getProgram({ programId: program.programId });
    assert.equal(quotaRows, detail?.balance?.lenders.filter((l) => l.quotaMinor > 0n).length);
    assert.equal(await page.locator("#bank-table tbody tr").count(), s.byLender.length);
    await fitsTheWindow(page);
    await shot(page, "dashboard");
  });

  test("the dashboard's filters are GetSummary's", async () => {
    const region = (await operator.enterprises.listEnterprises({ pageSize: 1 })).enterprises[0].regionCode.slice(0, 4);
    const s = await operator.reporting.getSummary({ regionPrefix: region });
    await page.fill('#summary-filters input[name="region"]', region);
    await page.click('#summary-filters button[type="submit"]');
    await page.waitForSelector(`[data-figure="needs"][data-value="${s.needs}"]`);
    assert.equal((await figure(page, "demand")).value, String(s.demandMinor));
    assert.equal((await figure(page, "enterprises")).value, String(s.enterprises));

    // A prefix the API refuses: its field violation is shown next to the field.
    await page.fill('#summary-filters input[name="region"]', "12ab");
    await page.click('#summary-filters button[type="submit"]');
    await page.waitForSelector('.problem[data-code="InvalidArgument"]');
    await page.waitForSelector('[data-error-for="region_prefix"]');
    await page.click('#summary-filters button[type="reset"]');
    await page.waitForSelector('[data-figure="enterprises"][data-value="196"]');
  });

  test("in English, amounts are in yuan", async () => {
    await page.click("#lang");
    await page.waitForSelector('html[lang="en"]');
    await page.waitForSelector('[data-figure="demand"] .figure-value');
    assert.equal((await figure(page, "demand")).text, "¥3.56 billion");
    assert.equal(await page.textContent('[data-figure="enterprises"] .figure-label'), "Enterprises");
    await shot(page, "dashboard-en");
    await page.click("#lang");
    await page.waitForSelector('html[lang="zh-CN"]');
  });

  test("enterprises: the list-membership filter and an enterprise's page", async () => {
    await page.click('nav a[href="#/enterprises"]');
    await page.waitForSelector(".enterprises-table");
    await page.selectOption("#enterprise-list", "NATIONAL_KEY_SUPPLY");
    await page.click('#enterprise-filters button[type="submit"]');
    const listed = await operator.enterprises.listEnterprises({ listCode: "NATIONAL_KEY_SUPPLY", pageSize: 20 });
    assert.ok(listed.enterprises.length > 0, "the demo has enterprises on the national key-supply list");
    await page.waitForFunction((name) => document.querySelector(".enterprises-table a")?.textContent === name,
      listed.enterprises[0].name);
    assert.equal(await page.locator(".enterprises-table tbody tr").count(), listed.enterprises.length);
    await fitsTheWindow(page);
    await shot(page, "enterprises");

    await page.click(".enterprises-table a.enterprise-link >> nth=0");
    await page.waitForSelector(".designations-table");
    assert.equal(await page.textContent("main h1"), listed.enterprises[0].name);
    assert.equal(await page.locator(".designations-table tbody tr").count(), listed.enterprises[0].designations.length);
    await shot(page, "enterprise");
  });

  test("needs: the filtered list and a need's page with its referrals and why other products were out", async () => {
    await page.click('nav a[href="#/needs"]');
    await page.waitForSelector(".needs-table");
    await page.check(`#need-filters input[name="status"][value="${NeedStatus.FUNDED}"]`);
    await page.click('#need-filters button[type="submit"]');
    const funded = await operator.financing.listNeeds({ statuses: [NeedStatus.FUNDED], pageSize: 20 });
    assert.ok(funded.needs.length > 0, "the demo has funded needs");
    await page.waitForSelector(`.needs-table a[data-need="${funded.needs[0].id}"]`);
    assert.equal(await page.locator(".needs-table tbody tr").count(), funded.needs.length);
    await shot(page, "needs");

    await page.click(`.needs-table a[data-need="${funded.needs[0].id}"]`);
    await page.waitForSelector(".referrals-table");
    const { referrals } = await operator.financing.getNeed({ needId: funded.needs[0].id });
    assert.equal(await page.locator(".referrals-table tbody tr").count(), referrals.length);
    assert.ok(referrals.length > 0);
    // A funded need can no longer be withdrawn.
    assert.equal(await page.locator("#withdraw").count(), 0);
  });

  let submittedNeed = "";
  test("a need submitted through the form, after a live preview, appears with its referrals and explanation", async () => {
    // An enterprise the demo's products would take a ¥500万, 12-month working-capital loan from.
    const neededBy = new Date(Date.now() + 30 * 86_400_000).toISOString().slice(0, 10);
    const all = (await operator.enterprises.listEnterprises({ pageSize: 100 })).enterprises;
    let chosen = "";
    for (const e of all) {
      const need = create(NeedSchema, {
        enterpriseId: e.id, amountMinor: 500_000_000n, termMonths: 12, purpose: Purpose.WORKING_CAPITAL,
        collateral: [Collateral.CREDIT], consentToShare: true, channel: Channel.BUREAU, neededBy,
      });
      const p = await operator.financing.previewMatches({ subject: { case: "need", value: need } });
      if (p.eligibleCount >= 2) { chosen = e.id; break; }
    }
    assert.ok(chosen, "some demo enterprise has two eligible products");
    const before = (await operator.financing.listNeeds({ enterpriseId: chosen, pageSize: 100 })).needs.length;

    await page.click('nav a[href="#/new"]');
    await page.waitForSelector(`#need-enterprise option[value="${chosen}"]`, { state: "attached" });
    await page.selectOption("#need-enterprise", chosen);
    await page.fill("#need-amount", "5000000");
    await page.fill("#need-needed-by", neededBy);
    await page.fill("#need-term", "999");
    // The preview asks the server, whose field violation lands next to the term.
    await page.waitForSelector('[data-error-for="need.term_months"]');
    await page.fill("#need-term", "12");
    await page.waitForSelector("#preview-counts");
    await page.waitForSelector('[data-error-for="need.term_months"]', { state: "detached" });
    assert.match(await page.textContent("#amount-echo") ?? "", /500万元/);
    assert.ok(await page.locator(".preview-table tbody tr").count() >= 2);
    await fitsTheWindow(page);
    await shot(page, "new-need");

    await page.dblclick("#need-submit"); // a double click submits once
    await page.waitForURL(/#\/need\/[0-9a-f-]{36}$/);
    submittedNeed = page.url().split("/").pop()!;
    await page.waitForSelector(".referrals-table");
    const { need, referrals } = await operator.financing.getNeed({ needId: submittedNeed });
    assert.equal(need?.enterpriseId, chosen);
    assert.equal(need?.amountMinor, 500_000_000n);
    assert.ok(referrals.length > 0);
    assert.equal(await page.locator(".referrals-table tbody tr").count(), referrals.length);
    assert.ok(await page.locator(".referrals-table .factors li").count() >= referrals.length, "each referral's score factors");
    assert.match(await page.textContent("#candidate-counts") ?? "", /\d/);
    assert.ok(await page.locator(".ineligible-table tbody tr, #ineligible p").count() > 0, "the products that were out, and why");
    assert.ok(await page.locator(".timeline li").count() >= 1 + referrals.length);
    const after = (await operator.financing.listNeeds({ enterpriseId: chosen, pageSize: 100 })).needs.length;
    assert.equal(after, before + 1, "the double click submitted one need");
    await fitsTheWindow(page);
    await shot(page, "need");
  });

  test("withdrawing a need asks for confirmation and a reason", async () => {
    const enterprise = (await operator.enterprises.listEnterprises({ pageSize: 1 })).enterprises[0];
    const { need } = await operator.financing.submitNeed({
      idempotencyKey: `console-test-${Date.now()}`,
      need: {
        enterpriseId: enterprise.id, amountMinor: 100_000_000n, termMonths: 6, purpose: Purpose.PAYROLL,
        collateral: [Collateral.CREDIT], consentToShare: true, channel: Channel.BUREAU,
        neededBy: new Date(Date.now() + 10 * 86_400_000).toISOString().slice(0, 10),
      },
    });
    await page.goto(`${baseUrl}/#/needs`);
    await page.goto(`${baseUrl}/#/need/${need!.id}`);
    // Re-routing a need that has its referrals adds none (the API's answer to a retry).
    const before = (await operator.financing.getNeed({ needId: need!.id })).referrals.length;
    await page.click("#reroute");
    await page.click('dialog button[type="submit"]');
    await page.waitForSelector("dialog", { state: "detached" });
    await page.waitForSelector(".toast");
    assert.equal((await operator.financing.getNeed({ needId: need!.id })).referrals.length, before);
    await page.waitForSelector(".referrals-table");
    assert.equal(await page.locator(".referrals-table tbody tr").count(), before);

    await page.click("#withdraw");
    await page.waitForSelector("dialog[open]");
    await page.click('dialog button.secondary'); // cancel: nothing happens
    await page.waitForSelector("dialog", { state: "detached" });
    assert.equal((await operator.financing.getNeed({ needId: need!.id })).need?.status, need!.status);
    await page.click("#withdraw");
    await page.fill('dialog textarea[name="reason"]', "企业已通过其他渠道获得融资");
    await page.click('dialog button[type="submit"]');
    await page.waitForSelector("main h1 .badge-withdrawn");
    assert.equal((await operator.financing.getNeed({ needId: need!.id })).need?.status, NeedStatus.WITHDRAWN);
    assert.equal(await page.locator("#withdraw").count(), 0);
  });

  test("re-routing a need without consent to share says why it cannot be", async () => {
    const enterprise = (await operator.enterprises.listEnterprises({ pageSize: 2 })).enterprises[1];
    const { need } = await operator.financing.submitNeed({
      idempotencyKey: `console-test-noconsent-${Date.now()}`,
      need: {
        enterpriseId: enterprise.id, amountMinor: 80_000_000n, termMonths: 12, purpose: Purpose.EQUIPMENT,
        collateral: [Collateral.CREDIT], consentToShare: false, channel: Channel.BUREAU,
        neededBy: new Date(Date.now() + 20 * 86_400_000).toISOString().slice(0, 10),
      },
    });
    assert.equal(need?.status, NeedStatus.SUBMITTED);
    await page.goto(`${baseUrl}/#/need/${need!.id}`);
    await page.click("#reroute");
    await page.click('dialog button[type="submit"]');
    await page.waitForSelector('dialog .problem[data-code="FailedPrecondition"]');
    await page.click("dialog button.secondary");
    await page.waitForSelector('main .problem[data-code="FailedPrecondition"]');
    assert.equal((await operator.financing.getNeed({ needId: need!.id })).need?.status, NeedStatus.SUBMITTED);
  });

  describe("a bank's loan officer", () => {
    let bank: Page;
    let referralId = "";
    let bankToken = "";

    before(async () => {
      // The bank the new need was routed to first.
      const { referrals } = await operator.financing.getNeed({ needId: submittedNeed });
      for (const [, token] of bankTokens()) {
        const mine = await api(token).partner.listReferrals({ pageSize: 100, statuses: [ReferralStatus.PENDING] });
        const hit = mine.referrals.find((r) => referrals.some((x) => x.id === r.id));
        if (hit) { referralId = hit.id; bankToken = token; break; }
      }
      assert.ok(referralId, "one of the banner's banks has the new need's referral");
      bank = await newPage();
      await signIn(bank, bankToken);
    });

    test("the inbox shows the bank's open referrals and follows them live", async () => {
      assert.equal(await bank.getAttribute("header .role", "data-role"), "LENDER");
      await bank.waitForSelector(`article.referral[data-referral="${referralId}"][data-status="PENDING"]`);
      const open = [ReferralStatus.PENDING, ReferralStatus.ACKNOWLEDGED, ReferralStatus.INFO_REQUESTED, ReferralStatus.APPROVED];
      let total = 0;
      let pageToken = "";
      do {
        const p = await api(bankToken).partner.listReferrals({ pageSize: 100, pageToken, statuses: open });
        total += p.referrals.length;
        pageToken = p.nextPageToken;
      } while (pageToken);
      assert.equal(await bank.locator("article.referral").count(), total);
      // Its consented enterprise data.
      const card = bank.locator(`article.referral[data-referral="${referralId}"]`);
      assert.ok((await card.locator("header strong").textContent())?.length);
      await bank.waitForSelector("#live-state.on");

      // Another of the bank's systems acknowledges it: the stream brings the change in.
      await api(bankToken).partner.acknowledgeReferral({ referralId });
      await bank.waitForSelector(`article.referral[data-referral="${referralId}"][data-status="ACKNOWLEDGED"]`);
      await fitsTheWindow(bank);
      await shot(bank, "inbox");

      // After a reload it resumes from the cursor it kept.
      const cursor = await bank.evaluate(() =>
        Object.entries(sessionStorage).find(([k]) => k.startsWith("finmatch.cursor."))?.[1]);
      assert.ok(cursor && BigInt(cursor) > 0n, `a cursor was kept (${cursor})`);
      await bank.reload();
      await bank.waitForSelector(`article.referral[data-referral="${referralId}"][data-status="ACKNOWLEDGED"]`);
      await bank.waitForSelector("#live-state.on");
    });

    test("the bank asks for information, then declines another referral with a reason", async () => {
      const card = bank.locator(`article.referral[data-referral="${referralId}"]`);
      await card.locator('button[data-action="request-info"]').click();
      await bank.waitForSelector("dialog[open]");
      await bank.click('dialog button[type="submit"]'); // empty: the API says what is missing
      await bank.waitForSelector('dialog [data-error-for="message"]');
      await bank.fill('dialog textarea[name="message"]', "请补充近三个月的纳税证明。");
      await bank.click('dialog button[type="submit"]');
      await bank.waitForSelector("dialog", { state: "detached" });
      await bank.waitForSelector(`article.referral[data-referral="${referralId}"][data-status="INFO_REQUESTED"]`);
      const { referral } = await api(bankToken).partner.getReferral({ referralId });
      assert.equal(referral?.infoRequestMessage, "请补充近三个月的纳税证明。");

      // Once the bureau has sent it, the bank acknowledges again and may then decide.
      await card.locator('button[data-action="acknowledge"]').click();
      await bank.waitForSelector(`article.referral[data-referral="${referralId}"][data-status="ACKNOWLEDGED"]`);

      const other = bank.locator('article.referral[data-status="PENDING"]').first();
      const otherId = (await other.getAttribute("data-referral"))!;
      assert.ok(otherId, "the bank has another pending referral");
      await other.locator('button[data-action="decline"]').click();
      await bank.waitForSelector("dialog[open]");
      await bank.selectOption('dialog select[name="reason"]', { index: 1 });
      await bank.fill('dialog textarea[name="note"]', "抵押物不足");
      await bank.click('dialog button[type="submit"]');
      await bank.waitForSelector("dialog", { state: "detached" });
      // A declined referral is no longer open: it leaves the list of open ones.
      await bank.waitForSelector(`article.referral[data-referral="${otherId}"]`, { state: "detached" });
      const declined = await api(bankToken).partner.getReferral({ referralId: otherId });
      assert.equal(declined.referral?.status, ReferralStatus.DECLINED);
      assert.equal(declined.referral?.declineNote, "抵押物不足");
    });

    test("approving outside the product's range is refused next to the field; within it, the bureau sees it", async () => {
      const card = bank.locator(`article.referral[data-referral="${referralId}"]`);
      await card.locator('button[data-action="approve"]').click();
      await bank.waitForSelector("dialog[open]");
      await bank.fill('dialog input[name="amount"]', "5000000");
      await bank.fill('dialog input[name="rate"]', "99");
      await bank.fill('dialog input[name="term"]', "12");
      await bank.click('dialog button[type="submit"]');
      await bank.waitForSelector('dialog .problem[data-code="InvalidArgument"]');
      await bank.waitForSelector('dialog [data-error-for="approve.rate_bps"]');
      await shot(bank, "inbox-approve");

      // The product's own range, as the operator reads it.
      const { referral } = await api(bankToken).partner.getReferral({ referralId });
      const { products } = await operator.lenders.listProducts({ lenderId: referral!.lenderId, pageSize: 100 });
      const rate = products.find((p) => p.id === referral!.productId)!.minRateBps;
      await bank.fill('dialog input[name="rate"]', `${Math.floor(rate / 100)}.${String(rate % 100).padStart(2, "0")}`);
      await bank.click('dialog button[type="submit"]');
      await bank.waitForSelector("dialog", { state: "detached" });
      await bank.waitForSelector(`article.referral[data-referral="${referralId}"][data-status="APPROVED"]`);

      await page.goto(`${baseUrl}/#/need/${submittedNeed}`);
      await page.waitForSelector("main h1 .badge-approved");
      const { need } = await operator.financing.getNeed({ needId: submittedNeed });
      assert.equal(need?.status, NeedStatus.APPROVED);
      assert.match(await page.textContent(".referrals-table") ?? "", /500万元/);
      await shot(page, "need-approved");
    });

    test("a disbursement recorded in the inbox funds the need", async () => {
      const card = bank.locator(`article.referral[data-referral="${referralId}"]`);
      await card.locator('button[data-action="disburse"]').click();
      await bank.waitForSelector("dialog[open]");
      await bank.fill('dialog input[name="reference"]', `LN-${Date.now()}`);
      await bank.click('dialog button[type="submit"]');
      await bank.waitForSelector("dialog", { state: "detached" });
      // Disbursed referrals leave the open list; unticking "open only" shows it.
      await bank.uncheck("#open-only");
      await bank.waitForSelector(`article.referral[data-referral="${referralId}"][data-status="DISBURSED"]`);

      await page.reload();
      await page.waitForSelector("main h1 .badge-funded");
      const { need } = await operator.financing.getNeed({ needId: submittedNeed });
      assert.equal(need?.status, NeedStatus.FUNDED);
      assert.equal(need?.fundedMinor, 500_000_000n);
    });
  });
});

describe("tokens the API does not accept", () => {
  test("an unknown token is refused at sign-in in words a person can act on", async () => {
    const page = await newPage();
    await page.goto(`${baseUrl}/`);
    await page.fill("#token", "fm_not-a-token");
    await page.click('form.sign-in button[type="submit"]');
    await page.waitForSelector('.problem[data-code="Unauthenticated"]');
    assert.match(await page.textContent(".problem") ?? "", /令牌无效/);
  });

  test("a token that expires while in use signs the officer out with a clear message", async () => {
    const { token } = await operator.lenders.issueCredential({
      role: Role.PORTAL, label: "console test: expires in seconds",
      expireTime: timestampFromDate(new Date(Date.now() + 4_000)),
    });
    const page = await newPage();
    await signIn(page, token);
    assert.equal(await page.getAttribute("header .role", "data-role"), "PORTAL");
    await page.waitForSelector('[data-figure="enterprises"]');
    await page.waitForTimeout(5_000);
    await page.click('nav a[href="#/needs"]');
    await page.waitForSelector('.sign-in .problem[data-code="Unauthenticated"]');
    assert.match(await page.textContent(".problem") ?? "", /重新登录/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem("finmatch.token")), null);
    await shot(page, "expired");
  });
});

test("no page threw or logged an error", () => {
  assert.deepEqual(pageErrors.filter((e) => !/status of 40[0-9]/.test(e)), []);
});
