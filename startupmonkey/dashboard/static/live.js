// The dashboard's one script: a page whose <main> names an event stream (data-live) is drawn
// again, in place, when the stream says that what it shows changed. Without it (or without
// JavaScript) every page still reads; it only does not update itself. No build step; nothing
// but this file, served by the dashboard itself.
"use strict";
(function () {
  const status = document.getElementById("live");
  const QUIET_MS = 1000;        // at most one redraw a second, however much changes
  const FIRST_RETRY_MS = 2000;  // after a lost stream: then twice as long each time
  const LAST_RETRY_MS = 60000;
  let source = null;
  let drawing = false;
  let again = false;
  let retry = FIRST_RETRY_MS;

  function say(text) {
    if (status) {
      status.textContent = text;
      status.hidden = text === "";
    }
  }

  function close() {
    if (source !== null) {
      source.close();
      source = null;
    }
  }

  function listen() {
    const main = document.querySelector("main[data-live]");
    if (main === null || typeof EventSource === "undefined") {
      say("");
      return;
    }
    source = new EventSource(main.dataset.live);
    source.addEventListener("open", function () {
      retry = FIRST_RETRY_MS;
      say("Live: this page updates itself.");
    });
    source.addEventListener("changed", function () { draw(); });
    source.addEventListener("ended", function (message) {
      close();
      let ended = {reason: "", then: "retry"};
      try {
        ended = JSON.parse(message.data);
      } catch (problem) {
        // told as a retry
      }
      if (ended.then === "redraw") {
        draw();  // from the page drawn now, a new stream
      } else if (ended.then === "stop") {
        say("This page does not update itself: " + ended.reason);
      } else {
        pause("Live updates paused (" + ended.reason + "): trying again.");
      }
    });
    source.addEventListener("error", function () {
      close();
      pause("Live updates paused: trying again.");
    });
  }

  function pause(text) {
    say(text);
    setTimeout(draw, retry);
    retry = Math.min(retry * 2, LAST_RETRY_MS);
  }

  async function draw() {
    if (drawing) {
      again = true;
      return;
    }
    drawing = true;
    try {
      const answer = await fetch(window.location.href,
                                 {cache: "no-store", credentials: "same-origin"});
      if (answer.status === 401) {
        close();
        say("The dashboard was restarted or stopped: open the login address it printed.");
        return;
      }
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.querySelector("main");
      const shown = document.querySelector("main");
      if (fresh !== null && shown !== null) {
        shown.replaceWith(document.adoptNode(fresh));
        if (page.title) {
          document.title = page.title;
        }
      }
      if (source === null) {
        listen();
      } else if (document.querySelector("main[data-live]") === null) {
        close();  // the page now shows nothing to follow (an error, say)
        say("");
      }
    } catch (problem) {
      close();
      pause("Live updates paused: trying again.");
    } finally {
      await new Promise(function (done) { setTimeout(done, QUIET_MS); });
      drawing = false;
      if (again) {
        again = false;
        draw();
      }
    }
  }

  listen();
}());
