/* zspark.event(type, fields), zspark.pageView(context): sendBeacon, else fetch, else the pixel.
   Served at /zspark.js without this comment and the indentation. */
(function (w, d, n) {
  var s = d.currentScript, base = s ? s.src.replace(/\/zspark\.js([?#].*)?$/, "") : "", log = base + "/log";
  function add(e, f) { for (var k in f) e[k] = f[k]; return e; }
  function query(o, skip) {
    var p = "", k, v;
    for (k in o) if (k != skip) {
      v = o[k];
      p += "&" + encodeURIComponent(k) + "=" + encodeURIComponent(typeof v == "string" ? v : JSON.stringify(v));
    }
    return p;
  }
  function send(e) {
    var body = JSON.stringify(e);
    try { if (n.sendBeacon(log, body)) return "beacon"; } catch (x) {}
    try {
      fetch(log, {method: "POST", body: body, keepalive: true, mode: "no-cors", credentials: "include"}).catch(function () {});
      return "fetch";
    } catch (x) {}
    new Image().src = base + "/pixel.gif" + "?" + query(e, "context").slice(1) + query(e.context);
    return "pixel";
  }
  w.zspark = {
    event: function (type, fields) { return send(add(add({}, fields), {type: type})); },
    pageView: function (context) {
      return send({type: "page_view", context: add({url: location.href, title: d.title, referrer: d.referrer}, context)});
    }
  };
})(window, document, navigator);
