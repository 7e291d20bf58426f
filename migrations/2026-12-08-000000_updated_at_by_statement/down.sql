CREATE FUNCTION finmatch_touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION finmatch_touch_updated_at() IS
    'BEFORE UPDATE trigger: sets updated_at to now() unless the UPDATE set it itself.';
CREATE TRIGGER enterprises_touch_updated_at BEFORE UPDATE ON enterprises
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();
CREATE TRIGGER lenders_touch_updated_at BEFORE UPDATE ON lenders
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();
CREATE TRIGGER products_touch_updated_at BEFORE UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();
CREATE TRIGGER needs_touch_updated_at BEFORE UPDATE ON needs
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();
CREATE TRIGGER referrals_touch_updated_at BEFORE UPDATE ON referrals
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();
CREATE TRIGGER programs_touch_updated_at BEFORE UPDATE ON programs
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();
CREATE TRIGGER allocations_touch_updated_at BEFORE UPDATE ON allocations
    FOR EACH ROW EXECUTE FUNCTION finmatch_touch_updated_at();
