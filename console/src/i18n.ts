// Chinese (zh-CN) by default, English on request; the choice is kept in localStorage.

import {
  Channel, Collateral, DeclineReason, EnterpriseSize, NeedStatus, Purpose, ReferralEventKind,
  ReferralStatus,
} from "./gen/finmatch/v1/common_pb";
import { Ineligibility } from "./gen/finmatch/v1/financing_service_pb";

export type Lang = "zh" | "en";

let current: Lang = localStorage.getItem("finmatch.lang") === "en" ? "en" : "zh";

export function lang(): Lang {
  return current;
}

export function setLang(next: Lang): void {
  current = next;
  localStorage.setItem("finmatch.lang", next);
  document.documentElement.lang = next === "zh" ? "zh-CN" : "en";
}

type Pair = readonly [zh: string, en: string];

const TEXT = {
  appName: ["融资对接服务平台", "finmatch financing console"],
  signIn: ["登录", "Sign in"],
  signOut: ["退出", "Sign out"],
  tokenLabel: ["访问令牌", "Access token"],
  tokenHint: [
    "粘贴管理员发放的令牌（finmatch dev 启动时会打印）。令牌只保存在本标签页中，关闭即失效。",
    "Paste the token you were issued (finmatch dev prints them at start). It is kept in this tab only.",
  ],
  signingIn: ["正在验证…", "Checking…"],
  language: ["English", "中文"],
  roleOperator: ["产业局管理员", "Bureau operator"],
  rolePortal: ["产业局门户", "Bureau portal"],
  roleLender: ["合作银行", "Partner bank"],
  navDashboard: ["总览", "Dashboard"],
  navNeeds: ["融资需求", "Needs"],
  navNewNeed: ["新增需求", "New need"],
  navEnterprises: ["企业", "Enterprises"],
  navInbox: ["推荐收件箱", "Referral inbox"],
  loading: ["加载中…", "Loading…"],
  none: ["暂无数据", "Nothing here"],
  next: ["下一页", "Next page"],
  prev: ["上一页", "Previous page"],
  apply: ["查询", "Apply"],
  reset: ["重置", "Reset"],
  cancel: ["取消", "Cancel"],
  confirm: ["确认", "Confirm"],
  close: ["关闭", "Close"],
  // dashboard
  filters: ["筛选", "Filters"],
  periodFrom: ["起始日期", "From"],
  periodTo: ["截止日期", "To"],
  regionPrefix: ["区域代码前缀", "Region code prefix"],
  industryPrefix: ["行业代码前缀", "Industry code prefix"],
  enterprises: ["企业数", "Enterprises"],
  needs: ["需求数", "Needs"],
  demand: ["融资需求总额", "Demand"],
  routed: ["已推送", "Routed"],
  approved: ["已获批", "Approved"],
  approvedAmount: ["获批金额", "Approved amount"],
  funded: ["已放款", "Funded"],
  disbursed: ["放款金额", "Disbursed"],
  fundingRate: ["融资满足率", "Funding rate"],
  medianResponse: ["首次答复中位时长", "Median time to first answer"],
  funnel: ["需求漏斗", "Funnel"],
  byBank: ["各银行推荐与答复", "By bank"],
  byIndustry: ["各行业需求", "By industry"],
  byRegion: ["各区域需求", "By region"],
  byProgram: ["专项再贷款", "Special-loan programmes"],
  quotaByBank: ["额度使用（按银行）", "Quota by bank"],
  quotaUsed: ["已确认", "Confirmed"],
  quotaReserved: ["已预留", "Reserved"],
  quotaRemaining: ["剩余", "Remaining"],
  programEnterprises: ["支持企业", "Enterprises"],
  programAllocated: ["已分配", "Allocated"],
  programQuota: ["总额度", "Total quota"],
  referrals: ["推荐", "Referrals"],
  approvals: ["批准", "Approvals"],
  declines: ["拒绝", "Declines"],
  asOf: ["数据截至", "As of"],
  quotaOperatorOnly: ["按银行的额度明细仅管理员可见。", "The quota by bank is shown to operators only."],
  // needs
  status: ["状态", "Status"],
  enterprise: ["企业", "Enterprise"],
  amount: ["金额", "Amount"],
  term: ["期限（月）", "Term (months)"],
  months: ["个月", "months"],
  purpose: ["用途", "Purpose"],
  collateral: ["担保方式", "Collateral"],
  maxRate: ["可接受最高利率（%）", "Highest acceptable rate (%)"],
  neededBy: ["资金需求日期", "Needed by"],
  consent: ["企业同意向银行共享信息", "The enterprise consents to sharing its data with banks"],
  channel: ["来源渠道", "Channel"],
  note: ["备注", "Note"],
  created: ["提交时间", "Submitted"],
  updated: ["更新时间", "Updated"],
  fundedAmount: ["已放款金额", "Funded amount"],
  createdFrom: ["提交起", "Submitted from"],
  createdTo: ["提交止", "Submitted to"],
  needTitle: ["融资需求", "Financing need"],
  bank: ["银行", "Bank"],
  product: ["产品", "Product"],
  score: ["匹配分", "Score"],
  factors: ["评分因素", "Score factors"],
  deadline: ["答复时限", "Answer by"],
  outcome: ["结果", "Outcome"],
  explanation: ["为什么是这些银行", "Why these banks"],
  ineligibleTitle: ["未入选的产品及原因", "Products that were out, and why"],
  eligibleCount: ["符合条件", "eligible"],
  ineligibleCount: ["不符合条件", "not eligible"],
  showMore: ["显示更多", "Show more"],
  activity: ["最近动态", "Recent activity"],
  timeline: ["进展", "Timeline"],
  timelineSubmitted: ["需求提交", "Need submitted"],
  timelineRouted: ["推送至", "Routed to"],
  withdraw: ["撤回需求", "Withdraw"],
  withdrawReason: ["撤回原因", "Reason for withdrawing"],
  withdrawConfirm: ["撤回后各银行的未完成推荐将被取消，确认撤回？", "Open referrals will be cancelled. Withdraw this need?"],
  reroute: ["重新推送", "Re-route"],
  rerouteConfirm: ["将该需求推送给尚未尝试的银行，确认？", "Route this need to banks not yet tried?"],
  done: ["操作成功", "Done"],
  // new need
  newNeedTitle: ["新增融资需求", "New financing need"],
  chooseEnterprise: ["选择企业", "Choose an enterprise"],
  amountYuan: ["金额（元）", "Amount (yuan)"],
  submit: ["提交需求", "Submit need"],
  submitting: ["提交中…", "Submitting…"],
  preview: ["实时匹配预览", "Live match preview"],
  previewHint: ["填写企业、金额和期限后显示可匹配的产品。", "Fill in the enterprise, amount and term to see the matching products."],
  selected: ["将推送", "will be routed"],
  // enterprises
  listCode: ["名单", "List"],
  allLists: ["全部", "All"],
  creditCode: ["统一社会信用代码", "Credit code"],
  name: ["名称", "Name"],
  region: ["区域", "Region"],
  industry: ["行业", "Industry"],
  size: ["规模", "Size"],
  employees: ["员工数", "Employees"],
  revenue: ["年营业收入", "Annual revenue"],
  designations: ["名单资格", "Designations"],
  grantedOn: ["认定日期", "Granted on"],
  expiresOn: ["有效期至", "Expires on"],
  reference: ["文号", "Reference"],
  contact: ["联系人", "Contact"],
  aboveDesignatedSize: ["规上企业", "Above designated size"],
  // inbox
  inboxTitle: ["推荐收件箱", "Referral inbox"],
  live: ["实时更新中", "Live"],
  reconnecting: ["连接中断，正在重连…", "Connection lost, reconnecting…"],
  acknowledge: ["确认受理", "Acknowledge"],
  requestInfo: ["补充材料", "Request information"],
  infoReceived: ["材料已收到", "Information received"],
  infoMessage: ["需要企业补充的材料", "What the enterprise should provide"],
  approve: ["批准", "Approve"],
  decline: ["拒绝", "Decline"],
  declineReason: ["拒绝原因", "Reason"],
  declineNote: ["说明", "Note"],
  disburse: ["登记放款", "Record disbursement"],
  loanReference: ["借据号", "Loan reference"],
  rateBps: ["利率（%）", "Rate (%)"],
  disbursedOn: ["放款日期", "Disbursed on"],
  approvedTerms: ["批准条件", "Approved terms"],
  noConsent: ["企业未同意共享信息", "The enterprise has not consented to sharing its data"],
  infoRequested: ["已请求补充", "Information requested"],
  openOnly: ["仅显示待处理", "Open only"],
  // errors
  errInvalid: ["提交的内容有误，请按提示修改：", "Some fields need correcting:"],
  errUnauthenticated: ["令牌无效、已被吊销或已过期，请重新登录。", "The token is unknown, revoked or expired: sign in again."],
  errDenied: ["当前身份无权执行此操作。", "Your role may not do this."],
  errNotFound: ["记录不存在，可能已被删除或编号有误。", "Not found: it may have been removed, or the id is wrong."],
  errConflict: ["该记录已被他人更改，请刷新后重试。", "Someone changed this meanwhile: reload and try again."],
  errPrecondition: ["当前状态不允许此操作：", "Not possible in the current state:"],
  errUnavailable: ["服务暂时不可用，请稍后重试。", "The service is unavailable for the moment: try again shortly."],
  errExhausted: ["请求过于频繁或额度不足，请稍后重试。", "Too many requests or a limit reached: try again shortly."],
  errOther: ["操作失败：", "It failed:"],
  errAmount: ["请输入以元为单位、最多两位小数的金额", "Enter an amount in yuan, with at most two decimals"],
  errRate: ["请输入百分比利率，最多两位小数，如 3.85", "Enter a rate in percent with at most two decimals, e.g. 3.85"],
  errTerm: ["请输入月数", "Enter a number of months"],
  errRequired: ["必填", "Required"],
} satisfies Record<string, Pair>;

export type Key = keyof typeof TEXT;

export function t(key: Key): string {
  return TEXT[key][current === "zh" ? 0 : 1];
}

function table<E extends number>(entries: Record<E, Pair>): (value: E) => string {
  return (value) => entries[value]?.[current === "zh" ? 0 : 1] ?? String(value);
}

export const needStatus = table<NeedStatus>({
  [NeedStatus.UNSPECIFIED]: ["未知", "unknown"],
  [NeedStatus.SUBMITTED]: ["已提交", "Submitted"],
  [NeedStatus.ROUTED]: ["已推送", "Routed"],
  [NeedStatus.APPROVED]: ["已获批", "Approved"],
  [NeedStatus.FUNDED]: ["已放款", "Funded"],
  [NeedStatus.UNMATCHED]: ["暂无匹配", "Unmatched"],
  [NeedStatus.WITHDRAWN]: ["已撤回", "Withdrawn"],
  [NeedStatus.EXPIRED]: ["已过期", "Expired"],
});

export const referralStatus = table<ReferralStatus>({
  [ReferralStatus.UNSPECIFIED]: ["未知", "unknown"],
  [ReferralStatus.PENDING]: ["待受理", "Pending"],
  [ReferralStatus.ACKNOWLEDGED]: ["已受理", "Acknowledged"],
  [ReferralStatus.INFO_REQUESTED]: ["待补充材料", "Information requested"],
  [ReferralStatus.APPROVED]: ["已批准", "Approved"],
  [ReferralStatus.DISBURSED]: ["已放款", "Disbursed"],
  [ReferralStatus.DECLINED]: ["已拒绝", "Declined"],
  [ReferralStatus.EXPIRED]: ["超时未答复", "Expired"],
  [ReferralStatus.CANCELLED]: ["已取消", "Cancelled"],
});

export const eventKind = table<ReferralEventKind>({
  [ReferralEventKind.UNSPECIFIED]: ["未知", "unknown"],
  [ReferralEventKind.CREATED]: ["新推荐", "New referral"],
  [ReferralEventKind.ACKNOWLEDGED]: ["已受理", "Acknowledged"],
  [ReferralEventKind.INFO_REQUESTED]: ["请求补充材料", "Information requested"],
  [ReferralEventKind.APPROVED]: ["已批准", "Approved"],
  [ReferralEventKind.DECLINED]: ["已拒绝", "Declined"],
  [ReferralEventKind.DISBURSED]: ["已放款", "Disbursed"],
  [ReferralEventKind.EXPIRED]: ["已超时", "Expired"],
  [ReferralEventKind.CANCELLED]: ["已取消", "Cancelled"],
  [ReferralEventKind.RESERVATION_LAPSED]: ["额度预留已失效", "Reservation lapsed"],
});

export const purpose = table<Purpose>({
  [Purpose.UNSPECIFIED]: ["未填写", "not given"],
  [Purpose.WORKING_CAPITAL]: ["流动资金", "Working capital"],
  [Purpose.PAYROLL]: ["发放工资", "Payroll"],
  [Purpose.RAW_MATERIALS]: ["采购原材料", "Raw materials"],
  [Purpose.EQUIPMENT]: ["购置设备", "Equipment"],
  [Purpose.EXPANSION]: ["扩大产能", "Expansion"],
  [Purpose.CONVERSION]: ["转产（如防疫物资）", "Conversion"],
  [Purpose.REFINANCING]: ["借新还旧", "Refinancing"],
});

export const collateral = table<Collateral>({
  [Collateral.UNSPECIFIED]: ["未填写", "not given"],
  [Collateral.CREDIT]: ["信用", "Unsecured (credit)"],
  [Collateral.GUARANTEE]: ["保证担保", "Guarantee"],
  [Collateral.REAL_ESTATE]: ["不动产抵押", "Real estate"],
  [Collateral.EQUIPMENT]: ["设备抵押", "Equipment"],
  [Collateral.RECEIVABLES]: ["应收账款质押", "Receivables"],
  [Collateral.IP_PLEDGE]: ["知识产权质押", "IP pledge"],
  [Collateral.INVENTORY]: ["存货质押", "Inventory"],
});

export const channel = table<Channel>({
  [Channel.UNSPECIFIED]: ["未填写", "not given"],
  [Channel.SELF]: ["企业自主申报", "The enterprise itself"],
  [Channel.BUREAU]: ["产业局代报", "The bureau"],
  [Channel.BANK_REFERRAL]: ["银行推荐", "A bank"],
});

export const size = table<EnterpriseSize>({
  [EnterpriseSize.UNSPECIFIED]: ["未填写", "not given"],
  [EnterpriseSize.MICRO]: ["微型", "Micro"],
  [EnterpriseSize.SMALL]: ["小型", "Small"],
  [EnterpriseSize.MEDIUM]: ["中型", "Medium"],
  [EnterpriseSize.LARGE]: ["大型", "Large"],
});

export const declineReason = table<DeclineReason>({
  [DeclineReason.UNSPECIFIED]: ["未填写", "not given"],
  [DeclineReason.OUTSIDE_APPETITE]: ["不符合本行授信偏好", "Outside our appetite"],
  [DeclineReason.INSUFFICIENT_COLLATERAL]: ["担保不足", "Insufficient collateral"],
  [DeclineReason.CREDIT_HISTORY]: ["信用记录不佳", "Credit history"],
  [DeclineReason.INCOMPLETE_INFORMATION]: ["资料不全", "Incomplete information"],
  [DeclineReason.CAPACITY]: ["本行额度已满", "No capacity"],
  [DeclineReason.OTHER]: ["其他", "Other"],
});

export const ineligibility = table<Ineligibility>({
  [Ineligibility.UNSPECIFIED]: ["未知", "unknown"],
  [Ineligibility.PRODUCT_INACTIVE]: ["产品已停办", "Product inactive"],
  [Ineligibility.LENDER_INACTIVE]: ["银行已暂停", "Bank inactive"],
  [Ineligibility.AMOUNT_OUT_OF_RANGE]: ["金额不在产品范围内", "Amount outside the product's range"],
  [Ineligibility.TERM_OUT_OF_RANGE]: ["期限不在产品范围内", "Term outside the product's range"],
  [Ineligibility.REGION_NOT_SERVED]: ["不服务该区域", "Region not served"],
  [Ineligibility.INDUSTRY_NOT_SERVED]: ["不服务该行业", "Industry not served"],
  [Ineligibility.COLLATERAL_NOT_ACCEPTED]: ["不接受该担保方式", "Collateral not accepted"],
  [Ineligibility.SIZE_BELOW_MINIMUM]: ["企业规模不足", "Enterprise too small"],
  [Ineligibility.DESIGNATION_MISSING]: ["缺少名单资格", "Designation missing"],
  [Ineligibility.RATE_BELOW_MINIMUM]: ["企业可接受利率低于产品最低利率", "Acceptable rate below the product's minimum"],
  [Ineligibility.CAPACITY_EXHAUSTED]: ["今日额度已满", "Capacity exhausted today"],
  [Ineligibility.ALREADY_TRIED]: ["已推送过该银行", "Already tried"],
  [Ineligibility.NO_CONSENT]: ["企业未同意共享信息", "No consent to share"],
});

const FACTORS: Record<string, Pair> = {
  rate: ["利率优势", "Rate"],
  amount_fit: ["金额匹配", "Amount fit"],
  approval_history: ["历史审批率", "Approval history"],
  responsiveness: ["答复及时性", "Responsiveness"],
  capacity_headroom: ["剩余额度", "Capacity headroom"],
  policy_priority: ["政策优先", "Policy priority"],
  locality: ["本地服务", "Locality"],
};

export function factor(name: string): string {
  return FACTORS[name]?.[current === "zh" ? 0 : 1] ?? name;
}

const LISTS: Record<string, Pair> = {
  NATIONAL_KEY_SUPPLY: ["全国性重点保障企业", "National key-supply list"],
  PROVINCIAL_KEY: ["省级重点保障企业", "Provincial key-supply list"],
};

export function listName(code: string): string {
  return LISTS[code]?.[current === "zh" ? 0 : 1] ?? code;
}
