"""A procedural pedestrian renderer (numpy + OpenCV), deterministic given its seeds.

A person is drawn from simple shapes in a fixed anatomy (head, hair, torso, arms, legs, shoes)
whose colours, patterns and shapes follow the person's attributes, plus the accessories of the
optional attributes. Each view varies pose (walking / standing / running legs and arms), scale,
horizontal position, background clutter, lighting, blur and partial occlusion.
"""
from __future__ import annotations

import cv2
import numpy as np

from .attributes import PersonIdentity

__all__ = ["render_person"]


def _c(rgb) -> tuple[int, int, int]:
    return tuple(int(v) for v in rgb)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    top, bottom = rng.integers(60, 200, 3), rng.integers(40, 180, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    img = (top[None, None] * (1 - t) + bottom[None, None] * t).repeat(w, axis=1).astype(np.uint8)
    for _ in range(int(rng.integers(2, 7))):  # clutter: walls, windows, poles
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 10, h // 2))
        cv2.rectangle(img, (x0, y0), (x1, y1), _c(rng.integers(30, 230, 3)), -1)
    return img


def _pattern(img: np.ndarray, mask: np.ndarray, kind: str, rgb, step: int) -> None:
    if kind == "pure":
        return
    h, w = mask.shape
    lines = np.zeros_like(mask)
    for y in range(0, h, step):
        lines[y:y + max(1, step // 4)] = 1
    if kind == "plaid":
        for x in range(0, w, step):
            lines[:, x:x + max(1, step // 4)] = 1
    sel = (lines > 0) & (mask > 0)
    img[sel] = rgb


def render_person(identity: PersonIdentity, view_seed: int, size: tuple[int, int] = (128, 64),
                  return_layout: bool = False, return_mask: bool = False):
    """Render one view of ``identity``.

    Args:
        view_seed: seed of this view's pose, placement, background and corruptions.
        size: (H, W) of the image.
    Returns:
        uint8 RGB image (H, W, 3); with ``return_layout`` also a dict of boolean masks (H, W)
        of the regions ``torso``, ``lower`` (lower clothes), ``head``, ``above_head``; with
        ``return_mask`` also (last) the boolean mask (H, W) of the pixels the person (with
        accessories and vehicle) covers: pixels changed from the background before the view
        corruptions, less the part hidden by the occlusion corruption. The image itself is the
        same with or without these flags.
    """
    a = identity.attributes
    H, W = size
    rng = np.random.default_rng(view_seed)
    img = _background(H, W, rng)
    background = img.copy() if return_mask else None
    scale = identity.height * float(rng.uniform(0.88, 1.0))
    ph = scale * H  # person height in pixels
    cx = W / 2 + float(rng.uniform(-0.12, 0.12)) * W
    feet_y = H * 0.97 - (0.08 * H if a["vehicle"] != "none" else 0.0)
    top_y = feet_y - ph
    head_r = ph * (0.085 if a["age"] != "child" else 0.11)
    head_c = (cx, top_y + head_r)
    neck_y = top_y + 2 * head_r
    sh_w = identity.width * ph
    waist_y = neck_y + ph * 0.34
    upper_color, upper_pattern, upper_type = a["upper_clothes"].split("/")
    lower_color, lower_pattern, lower_type = a["lower_clothes"].split("/")
    hem_y = waist_y + (ph * 0.16 if upper_type == "coat" else ph * 0.03)
    knee_y = waist_y + (feet_y - waist_y) * 0.5
    masks = {k: np.zeros((H, W), np.uint8) for k in ("torso", "lower", "head", "above_head")}

    # pose: legs and arms
    spread = {"standing": 0.05, "walking": 0.22, "running": 0.42}[a["action"]] * ph * 0.5
    swing = {"standing": 0.02, "walking": 0.12, "running": 0.3}[a["action"]] * ph
    if a["vehicle"] != "none":
        spread = 0.18 * ph * 0.5
    hip_l, hip_r = (cx - sh_w * 0.22, waist_y), (cx + sh_w * 0.22, waist_y)
    foot_l, foot_r = (cx - sh_w * 0.22 - spread, feet_y), (cx + sh_w * 0.22 + spread, feet_y)
    leg_t = max(2, int(sh_w * 0.36))

    def line(p, q, color, t, target=None):
        p, q = (int(p[0]), int(p[1])), (int(q[0]), int(q[1]))
        cv2.line(img, p, q, _c(color), t, cv2.LINE_AA)
        if target is not None:
            cv2.line(target, p, q, 1, t)

    # vehicle behind the legs
    if a["vehicle"] != "none":
        wr = ph * (0.13 if a["vehicle"] == "bicycle" else 0.15)
        wy = H * 0.97 - wr
        for wx in (cx - ph * 0.25, cx + ph * 0.25):
            cv2.circle(img, (int(wx), int(wy)), int(wr), (20, 20, 20), max(1, int(ph * 0.02)) if a["vehicle"] == "bicycle" else -1)
        frame = (160, 30, 30) if a["vehicle"] == "bicycle" else (40, 40, 60)
        line((cx - ph * 0.25, wy), (cx + ph * 0.25, wy - wr * 0.8), frame, max(2, int(ph * 0.03 if a["vehicle"] == "bicycle" else ph * 0.09)))

    # legs (skin where the lower garment ends), shoes
    leg_end = {"shorts": knee_y, "skirt": waist_y + (feet_y - waist_y) * 0.45}.get(lower_type, feet_y)
    for hip, foot in ((hip_l, foot_l), (hip_r, foot_r)):
        t_end = (leg_end - waist_y) / max(1e-6, feet_y - waist_y)
        mid = (hip[0] + (foot[0] - hip[0]) * t_end, leg_end)
        line(mid, foot, identity.skin_rgb, leg_t)
        if lower_type != "skirt":
            line(hip, mid, identity.lower_rgb, leg_t, masks["lower"])
        cv2.ellipse(img, (int(foot[0]), int(foot[1])), (max(2, leg_t // 2 + 2), max(1, leg_t // 3)), 0, 0, 360,
                    _c(identity.shoe_rgb), -1)
    if lower_type == "skirt":
        pts = np.array([[cx - sh_w * 0.42, waist_y], [cx + sh_w * 0.42, waist_y],
                        [cx + sh_w * 0.7, leg_end], [cx - sh_w * 0.7, leg_end]], np.int32)
        cv2.fillPoly(img, [pts], _c(identity.lower_rgb))
        cv2.fillPoly(masks["lower"], [pts], 1)
    if lower_type == "jeans":  # seams
        for hip, foot in ((hip_l, foot_l), (hip_r, foot_r)):
            line(hip, ((hip[0] + foot[0]) / 2, (waist_y + leg_end) / 2), np.clip(np.add(identity.lower_rgb, 45), 0, 255), 1)
    _pattern(img, masks["lower"], lower_pattern, identity.pattern_rgb, max(3, int(ph * 0.05)))
    shown_lower = img.copy()  # pixels unchanged from here on still show the lower garment

    # backpack behind the torso (visible as a bulge on one side)
    if a["bag"] == "backpack":
        cv2.rectangle(img, (int(cx + sh_w * 0.35), int(neck_y + ph * 0.04)), (int(cx + sh_w * 0.75), int(waist_y)),
                      _c(identity.accessory_rgb), -1)

    # torso
    torso = np.array([[cx - sh_w / 2, neck_y], [cx + sh_w / 2, neck_y],
                      [cx + sh_w * 0.42, hem_y], [cx - sh_w * 0.42, hem_y]], np.int32)
    cv2.fillPoly(img, [torso], _c(identity.upper_rgb))
    cv2.fillPoly(masks["torso"], [torso], 1)
    _pattern(img, masks["torso"], upper_pattern, identity.pattern_rgb, max(3, int(ph * 0.05)))
    shown_torso = img.copy()
    if upper_type == "jacket":  # open front shows the shirt beneath
        cv2.rectangle(img, (int(cx - sh_w * 0.05), int(neck_y)), (int(cx + sh_w * 0.05), int(hem_y)), (225, 225, 225), -1)
    if upper_type == "shirt":  # collar
        cv2.fillPoly(img, [np.array([[cx - sh_w * 0.15, neck_y], [cx + sh_w * 0.15, neck_y], [cx, neck_y + ph * 0.04]], np.int32)],
                     (240, 240, 240))
    if upper_type == "sweater":  # ribbed hem band
        cv2.rectangle(img, (int(cx - sh_w * 0.42), int(hem_y - ph * 0.025)), (int(cx + sh_w * 0.42), int(hem_y)),
                      _c(np.clip(np.subtract(identity.upper_rgb, 35), 0, 255)), -1)
    mx, my = identity.mark_pos  # identity-specific mark
    cv2.circle(img, (int(cx - sh_w * 0.35 + mx * sh_w * 0.7), int(neck_y + my * (hem_y - neck_y))),
               max(1, int(ph * 0.018)), _c(identity.mark_rgb), -1)

    # arms: sleeve, then skin, then hand (glove)
    arm_t = max(2, int(sh_w * 0.22))
    sleeve = 0.45 if upper_type == "t-shirt" else 1.0
    hands = []
    for side, sgn in (("l", -1), ("r", 1)):
        sh = (cx + sgn * sh_w * 0.5, neck_y + ph * 0.02)
        hand = (sh[0] + sgn * ph * 0.04 + (swing if side == "l" else -swing) * 0.6, waist_y + ph * 0.06)
        if a["cellphone"] != "none" and side == "r":
            hand = (sh[0] + ph * 0.02, neck_y + ph * 0.05)  # phone at the ear
        if a["umbrella"] != "none" and side == "l":
            hand = (cx - sh_w * 0.2, neck_y - ph * 0.02)
        if a["vehicle"] != "none":
            hand = (cx + sgn * sh_w * 0.7, waist_y - ph * 0.02)
        elbow = (sh[0] + (hand[0] - sh[0]) * sleeve, sh[1] + (hand[1] - sh[1]) * sleeve)
        line(sh, elbow, identity.upper_rgb, arm_t)
        if sleeve < 1:
            line(elbow, hand, identity.skin_rgb, max(1, arm_t - 1))
        hands.append(hand)
        glove = a["gloves"] != "none"
        cv2.circle(img, (int(hand[0]), int(hand[1])), max(1, arm_t // 2 + 1),
                   _c(identity.accessory_rgb if glove else identity.skin_rgb), -1)

    # bags carried at the side
    if a["bag"] == "shoulder-bag":
        line((cx - sh_w * 0.45, neck_y), (cx + sh_w * 0.55, waist_y), (40, 30, 20), max(1, int(ph * 0.012)))
        cv2.rectangle(img, (int(cx + sh_w * 0.45), int(waist_y - ph * 0.05)), (int(cx + sh_w * 0.85), int(waist_y + ph * 0.06)),
                      _c(identity.accessory_rgb), -1)
    if a["bag"] == "handbag":
        hx, hy = hands[0]
        cv2.rectangle(img, (int(hx - ph * 0.05), int(hy)), (int(hx + ph * 0.03), int(hy + ph * 0.08)), _c(identity.accessory_rgb), -1)
    if a["cellphone"] != "none":
        hx, hy = hands[1]
        cv2.rectangle(img, (int(hx - 1), int(hy - ph * 0.04)), (int(hx + max(2, ph * 0.02)), int(hy + ph * 0.01)), (15, 15, 25), -1)

    # head, hair, face accessories
    hc, hr = (int(head_c[0]), int(head_c[1])), max(2, int(head_r))
    if a["hair_length"] == "long":  # hair falling behind the shoulders
        cv2.rectangle(img, (hc[0] - hr - 1, hc[1]), (hc[0] + hr + 1, int(neck_y + ph * 0.12)), _c(identity.hair_rgb), -1)
    cv2.circle(img, hc, hr, _c(identity.skin_rgb), -1)
    cv2.circle(masks["head"], hc, hr, 1, -1)
    if a["hair_length"] != "bald":
        cv2.ellipse(img, hc, (hr + 1, hr + 1), 0, 180, 360, _c(identity.hair_rgb), -1)
    eye_y = hc[1] + hr // 5
    if a["glasses"] == "glasses":
        cv2.rectangle(img, (hc[0] - hr + 1, eye_y - 1), (hc[0] + hr - 1, eye_y + 1), (60, 60, 60), 1)
    elif a["glasses"] == "sunglasses":
        cv2.rectangle(img, (hc[0] - hr + 1, eye_y - max(1, hr // 4)), (hc[0] + hr - 1, eye_y + max(1, hr // 4)), (5, 5, 5), -1)
    if a["smoke"] != "none":
        line((hc[0] + hr // 3, hc[1] + hr // 2), (hc[0] + hr + max(3, hr // 2), hc[1] + hr // 2), (250, 250, 250), max(1, hr // 5))
        cv2.circle(img, (hc[0] + hr + max(3, hr // 2), hc[1] + hr // 2), max(1, hr // 5), (255, 90, 0), -1)
    above = np.zeros((H, W), np.uint8)
    cv2.rectangle(above, (hc[0] - hr - 2, max(0, hc[1] - 2 * hr - 2)), (hc[0] + hr + 2, hc[1] - hr // 2), 1, -1)
    masks["above_head"] = above
    if a["hat"] == "hat":
        cv2.rectangle(img, (hc[0] - hr - max(2, hr // 2), hc[1] - hr // 2), (hc[0] + hr + max(2, hr // 2), hc[1] - hr // 2 + max(1, hr // 4)),
                      _c(identity.accessory_rgb), -1)
        cv2.rectangle(img, (hc[0] - hr + 1, hc[1] - 2 * hr), (hc[0] + hr - 1, hc[1] - hr // 2), _c(identity.accessory_rgb), -1)
    elif a["hat"] == "cap":
        cv2.ellipse(img, hc, (hr + 1, hr + 1), 0, 180, 360, _c(identity.accessory_rgb), -1)
        cv2.rectangle(img, (hc[0], hc[1] - max(1, hr // 4)), (hc[0] + hr + max(2, hr // 2), hc[1]), _c(identity.accessory_rgb), -1)
    if a["umbrella"] != "none":
        ux, uy = hands[0]
        line((ux, uy), (ux, top_y - ph * 0.08), (40, 40, 40), max(1, int(ph * 0.012)))
        cv2.ellipse(img, (int(ux), int(top_y - ph * 0.06)), (int(ph * 0.2), int(ph * 0.1)), 0, 180, 360,
                    _c(identity.accessory_rgb), -1)

    # the layout keeps only what is still visible of each garment
    masks["lower"] &= np.all(img == shown_lower, axis=2).astype(np.uint8)
    masks["torso"] &= np.all(img == shown_torso, axis=2).astype(np.uint8)
    person = np.any(img != background, axis=2) if return_mask else None
    # view corruptions: lighting, occlusion, blur
    img = np.clip(img.astype(np.float32) * float(rng.uniform(0.75, 1.2)) + float(rng.uniform(-15, 15)), 0, 255).astype(np.uint8)
    if rng.random() < 0.15:  # an obstacle hides part of the legs
        y0 = int(knee_y + rng.uniform(0, 0.3) * (feet_y - knee_y))
        cv2.rectangle(img, (0, y0), (W, H), _c(rng.integers(30, 200, 3)), -1)
        for m in masks.values():
            m[y0:] = 0
        if person is not None:
            person[y0:] = False
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), float(rng.uniform(0.3, 1.0)))
    out = [img]
    if return_layout:
        out.append({k: v.astype(bool) for k, v in masks.items()})
    if return_mask:
        out.append(person)
    return out[0] if len(out) == 1 else tuple(out)
