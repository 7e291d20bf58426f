// ECharts, with only the chart kinds the dashboard draws (a smaller bundle than `import "echarts"`).

import * as echarts from "echarts/core";
import { BarChart, FunnelChart } from "echarts/charts";
import { GridComponent, LegendComponent, TooltipComponent } from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";
import { h } from "../dom";

echarts.use([BarChart, FunnelChart, GridComponent, LegendComponent, TooltipComponent, CanvasRenderer]);

export type ChartOption = echarts.EChartsCoreOption;

/** A chart panel; the chart is drawn once the panel is in the document, and resizes with it. */
export function chart(title: string, option: ChartOption, id: string, signal: AbortSignal): HTMLElement {
  const canvas = h("div", { class: "chart", id: `chart-${id}` });
  const panel = h("section", { class: "card chart-card" }, h("h2", {}, title), canvas);
  // The panel is built before it is placed (a view may still be loading the rest), so the chart
  // waits for the frame in which it is in the document; an aborted view never draws it.
  const draw = () => {
    if (signal.aborted) return;
    if (!canvas.isConnected) {
      requestAnimationFrame(draw);
      return;
    }
    // Animation off: the figures appear at once and screenshots are stable.
    const c = echarts.init(canvas, undefined, { renderer: "canvas" });
    c.setOption({ animation: false, ...option });
    const observer = new ResizeObserver(() => c.resize());
    observer.observe(canvas);
    signal.addEventListener("abort", () => {
      observer.disconnect();
      c.dispose();
    });
  };
  requestAnimationFrame(draw);
  return panel;
}

/** Fen as a number of 万元 for an axis (display only; the exact figures are in the tables). */
export function wan(fen: bigint): number {
  return Number(fen / 100n) / 10_000;
}
