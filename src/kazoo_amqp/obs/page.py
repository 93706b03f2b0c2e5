"""The status page served at ``/``: one self-contained HTML document (no external assets).

Inline CSS and JavaScript; the script polls ``/status.json`` every two seconds and redraws the
tables and the SVG plots in place. ``CSP`` forbids loading anything from elsewhere, so the page
works on an isolated management network and cannot leak to a CDN. Each plot's ``<svg>`` carries
``data-points`` (how many samples it drew) for the browser test.
"""

from __future__ import annotations

__all__ = ["CSP", "HTML"]

CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
)

_HTML = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kazoo-amqp status</title>
<style>
:root{--bg:#f4f6f9;--card:#fff;--ink:#1d2433;--mute:#6b7487;--line:#e3e7ee;--ok:#1a9e5a;
--bad:#d23c3c;--warn:#d98b0b;--c1:#3069d6;--c2:#1a9e5a;--c3:#b14bd3;--c4:#d98b0b}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,
sans-serif;background:var(--bg);color:var(--ink)}
header{background:#1d2433;color:#fff;padding:14px 24px;display:flex;align-items:center;gap:18px;
flex-wrap:wrap}header h1{font-size:18px;margin:0;font-weight:600}
header .meta{color:#b8c0d0;font-size:13px}.badge{padding:3px 10px;border-radius:12px;
font-weight:600;font-size:12px;letter-spacing:.3px}.ok{background:var(--ok);color:#fff}
.bad{background:var(--bad);color:#fff}.warn{background:var(--warn);color:#fff}
main{padding:18px 24px;max-width:1500px;margin:auto}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(118px,1fr));gap:12px;
margin-bottom:16px}.kpi{background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:10px 14px}.kpi .v{font-size:22px;font-weight:600}.kpi .l{color:var(--mute);font-size:12px}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px;
margin-bottom:16px}.card{background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:12px 14px}.card h2{font-size:14px;margin:0 0 6px;font-weight:600}
.legend{font-size:12px;color:var(--mute);margin-bottom:2px}.legend span{margin-right:12px;
white-space:nowrap}.legend i{display:inline-block;width:10px;height:3px;margin-right:4px;
vertical-align:middle}svg{width:100%;height:170px;display:block}
svg text{font-size:10px;fill:var(--mute)}.grid line{stroke:var(--line)}
table{border-collapse:collapse;width:100%;font-size:13px}th{text-align:left;color:var(--mute);
font-weight:500;border-bottom:1px solid var(--line);padding:5px 8px}td{padding:5px 8px;
border-bottom:1px solid var(--line);vertical-align:top}td.num{text-align:right;
font-variant-numeric:tabular-nums}.tables{display:grid;grid-template-columns:
repeat(auto-fit,minmax(560px,1fr));gap:14px}.dot{display:inline-block;width:9px;height:9px;
border-radius:50%;margin-right:6px}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:12px}#reasons{color:#ffd2d2;font-size:13px}.err{color:var(--bad);font-size:12px}
</style></head><body>
<header><h1>kazoo-amqp</h1><span id="ready" class="badge warn">loading</span>
<span class="meta" id="meta"></span><span id="reasons"></span></header>
<main>
<div class="kpis" id="kpis"></div>
<div class="plots">
 <div class="card"><h2>Publishes confirmed / s</h2><div class="legend" id="lg-pub"></div>
  <svg id="pl-pub" data-points="0"></svg></div>
 <div class="card"><h2>Deliveries consumed and handled / s</h2><div class="legend" id="lg-con"></div>
  <svg id="pl-con" data-points="0"></svg></div>
 <div class="card"><h2>Queries / s</h2><div class="legend" id="lg-q"></div>
  <svg id="pl-q" data-points="0"></svg></div>
 <div class="card"><h2>Query latency of answered queries (ms, last 5 s)</h2><div class="legend" id="lg-lat"></div>
  <svg id="pl-lat" data-points="0"></svg></div>
</div>
<div class="tables">
 <div class="card"><h2>Brokers</h2><table id="brokers"></table></div>
 <div class="card"><h2>Workers</h2><table id="workers"></table></div>
 <div class="card" style="grid-column:1/-1"><h2>Subscriptions</h2><table id="subs"></table></div>
</div>
</main>
<script>
"use strict";
const $=id=>document.getElementById(id);
const esc=s=>String(s??"").replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const fmt=v=>v==null?"\u2013":v>=1e6?(v/1e6).toFixed(1)+"M":v>=1e4?(v/1e3).toFixed(1)+"k":
  (Math.round(v*10)/10).toLocaleString();
function nice(max){if(!(max>0))return 1;const p=Math.pow(10,Math.floor(Math.log10(max)));
  for(const m of[1,2,2.5,5,10])if(m*p>=max)return m*p;return 10*p}
function plot(svgId,lgId,hist,series,unit,now,span){
  const svg=$(svgId),W=svg.clientWidth||600,H=170,L=46,R=8,T=8,B=20;
  let max=0,points=0;
  for(const s of series)for(const p of hist){const v=p[s.key];if(v!=null&&v>max)max=v}
  const top=nice(max*1.1),x=t=>L+(W-L-R)*(1-(now-t)/span),y=v=>T+(H-T-B)*(1-v/top);
  let g='<g class="grid">';
  for(let i=0;i<=4;i++){const v=top*i/4,yy=y(v);g+=`<line x1="${L}" x2="${W-R}" y1="${yy}" y2="${yy}"/>`+
    `<text x="${L-5}" y="${yy+3}" text-anchor="end">${fmt(v)}</text>`}
  for(let m=0;m<=span/60;m++){const xx=x(now-m*60);if(xx<L-1)break;
    g+=`<text x="${xx}" y="${H-5}" text-anchor="${m?"middle":"end"}">${m?"-"+m+"m":"now"}</text>`}
  g+="</g>";let lg="";
  for(const s of series){let d="",pen=false;
    for(const p of hist){const v=p[s.key];if(v==null||p.t<now-span){pen=false;continue}
      d+=(pen?"L":"M")+x(p.t).toFixed(1)+","+y(v).toFixed(1);pen=true;points++}
    g+=`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.8" stroke-linejoin="round"${s.dash?' stroke-dasharray="5 3"':""}/>`;
    const last=hist.length?hist[hist.length-1][s.key]:null;
    lg+=`<span><i style="background:${s.color}"></i>${esc(s.name)} <b>${fmt(last)}</b>${unit}</span>`}
  svg.setAttribute("viewBox",`0 0 ${W} ${H}`);svg.innerHTML=g;svg.dataset.points=points;
  $(lgId).innerHTML=lg}
function table(id,head,rows){$(id).innerHTML="<tr>"+head.map(h=>`<th>${h}</th>`).join("")+"</tr>"+
  (rows.length?rows.join(""):`<tr><td colspan="${head.length}" style="color:var(--mute)">none</td></tr>`)}
const dot=(c,t)=>`<span class="dot" style="background:var(--${c})"></span>${t}`;
function dur(s){s=Math.max(0,Math.round(s));const d=Math.floor(s/86400),h=Math.floor(s%86400/3600),
  m=Math.floor(s%3600/60);return d?`${d}d ${h}h`:h?`${h}h ${m}m`:`${m}m ${s%60}s`}
let updates=0;
async function refresh(){
  let st;try{const r=await fetch("status.json",{cache:"no-store"});st=await r.json()}
  catch(e){$("ready").className="badge bad";$("ready").textContent="unreachable";return}
  $("ready").className="badge "+(st.ready?"ok":"bad");$("ready").textContent=st.ready?"READY":"NOT READY";
  $("reasons").textContent=(st.reasons||[]).join("; ");
  $("meta").textContent=`node ${st.node} · version ${st.version} · up ${dur(st.now-st.started)}`;
  const t=st.totals,k=[["published",t.published],["publish failures",t.publish_failed],
    ["buffered",t.buffered],["queries",t.queries],["query timeouts",t.query_timeouts],
    ["consumed",t.consumed],["handled",t.handled],["handler errors",t.handler_errors],
    ["in flight",t.inflight]];
  $("kpis").innerHTML=k.map(([l,v])=>`<div class="kpi"><div class="v">${fmt(v)}</div><div class="l">${l}</div></div>`).join("");
  const h=st.history||[],now=h.length?h[h.length-1].t:st.now,span=300;
  plot("pl-pub","lg-pub",h,[{key:"publish",name:"confirmed",color:"#3069d6"}],"/s",now,span);
  plot("pl-con","lg-con",h,[{key:"consume",name:"consumed",color:"#1a9e5a"},
    {key:"handled",name:"handled",color:"#b14bd3",dash:1}],"/s",now,span);
  plot("pl-q","lg-q",h,[{key:"query",name:"queries",color:"#d98b0b"}],"/s",now,span);
  plot("pl-lat","lg-lat",h,[{key:"query_p50_ms",name:"p50",color:"#3069d6"},
    {key:"query_p90_ms",name:"p90",color:"#d98b0b"},{key:"query_p99_ms",name:"p99",color:"#d23c3c"}]," ms",now,span);
  table("brokers",["#","broker","zone","state","connects","last error"],(st.brokers||[]).map(b=>
    `<tr><td>${b.server_id}</td><td class="mono">${esc(b.url)}</td><td>${esc(b.zone)}${b.primary?" (primary)":""}</td>`+
    `<td>${b.up?(b.blocked?dot("warn","blocked: "+esc(b.blocked)):dot("ok","up")):dot("bad","down")}</td>`+
    `<td class="num">${b.connects}</td><td class="err">${b.up?"":esc(b.last_error)}</td></tr>`));
  table("workers",["#","pid","state","in flight","restarts"],(st.workers||[]).map(w=>
    `<tr><td>${w.index}</td><td class="mono">${w.pid??"\u2013"}</td><td>${w.reloading?dot("warn","reloading"):
    w.alive?(w.inflight?dot("c1","busy"):dot("ok","idle")):dot("bad","down")}</td>`+
    `<td class="num">${w.inflight}</td><td class="num">${w.restarts}</td></tr>`));
  table("subs",["exchange","type","queue","routing keys","ack","options"],(st.subscriptions||[]).map(s=>
    `<tr><td class="mono">${esc(s.exchange)}</td><td>${esc(s.type)}</td><td class="mono">${esc(s.queue)}</td>`+
    `<td class="mono">${esc((s.routing_keys||[]).join(", "))}</td><td>${esc(s.ack)}</td><td>${esc(s.options)}</td></tr>`));
  document.body.dataset.updates=++updates}
refresh();setInterval(refresh,2000);
</script></body></html>
"""

HTML = _HTML.encode()
